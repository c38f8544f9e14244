//! Integration tests of ukasan-symbolize: one module per area.

mod c_programs;
mod debug_files;
mod golden;
mod offline_fuzz;
mod self_symbolize;
mod util;
