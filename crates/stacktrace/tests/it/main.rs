//! Integration tests of the capture API.
