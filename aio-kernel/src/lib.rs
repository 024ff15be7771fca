//! The kernel half of Linux AIO in Rust. Not written yet: this crate is a
//! placeholder in the workspace layout.
#![no_std]
