//! Integration tests of the capture API: one binary, a module per area.

mod alloc_count;
mod api;
mod dwarf;
mod fuzz;
mod shadow;
mod softshadow;
