//! Crust LAN beacon discovery (planned; see ROADMAP).
//!
//! This crate is reserved in the workspace; its implementation is planned (see `ROADMAP.md`).
#![forbid(unsafe_code)]
