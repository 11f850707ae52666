//! kurir's domain: identifiers, validated values, the delivery state machines
//! and the settings and readiness rules the API and the worker share.
//!
//! This crate owns the rules ("a phone number is E.164", "a message status only
//! moves forward"). It does no I/O: no SQL, no AMQP, no HTTP. Once a value has
//! one of these types it is valid, so nothing downstream re-checks it.
//! [`runtime`] holds the task and reconnect habits every process shares.

pub mod apikey;
pub mod attempt;
pub mod config;
pub mod health;
pub mod ids;
pub mod intake;
pub mod publishable;
pub mod runtime;
pub mod status;
pub mod telemetry;
pub mod template;
pub mod validate;

pub use ids::{AccountId, JobKind, MessageId, StatusUpdateId, UserId};
pub use intake::IntakeLimit;
pub use publishable::Publishable;
pub use status::{JobState, LastError, MessageStatus, StatusUpdateState};
pub use telemetry::TraceContext;
pub use template::{Content, Template};
pub use validate::{
    FieldError, MessageBody, PhoneNumber, ProfileImage, StatusText, UserName, ValidationErrors,
};
