//! Linux AIO system calls.
