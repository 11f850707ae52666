//! HTTP handlers, one module per resource.

pub mod messages;
pub mod status_updates;
pub mod users;
