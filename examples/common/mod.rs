//! Code the login and cluster examples share (included with `#[path]`; not an
//! example of its own).

pub mod login_app;
pub mod settings;
