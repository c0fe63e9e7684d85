//! The embedded adapters: everything in one process, no servers to install.

pub mod broker;
pub mod bus;
pub mod sqlite;
