//! The safe AIO API. Not written yet: this crate is a placeholder in the
//! workspace layout.
