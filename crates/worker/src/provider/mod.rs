//! Providers deliver a text message to a phone number, or apply a status
//! update, and classify the answer as delivered, retryable or permanent.
//!
//! A provider never retries by itself and never sleeps: it makes one attempt
//! and reports what happened; the worker records it and schedules any retry in
//! Postgres.

use std::sync::Arc;

use crate::config::{ProviderArgs, ProviderKind};
use async_trait::async_trait;

mod http;
mod log;
mod meta_errors;
#[cfg(test)]
mod test_support;
mod webhook;
mod whatsapp;

pub use self::log::LogProvider;
pub use webhook::WebhookProvider;
pub use whatsapp::WhatsAppProvider;

/// What a provider is handed: the row as the claim returned it.
pub use kurir_store::pipeline::{ClaimedMessage, ClaimedStatusUpdate};

/// What one attempt came to: the shape every layer shares (see
/// `kurir_core::attempt`).
pub use kurir_core::attempt::{Outcome, ProviderError};

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// A short name for logs and attempt records: `log`, `whatsapp`, `webhook`.
    fn name(&self) -> &'static str;

    /// The WhatsApp phone number id messages go out from, which receipts
    /// name; `None` for a provider that is not WhatsApp (it gets none).
    fn sender(&self) -> Option<&str> {
        None
    }

    /// One attempt to deliver a text message.
    async fn send_message(&self, message: &ClaimedMessage) -> Outcome;

    /// One attempt to apply a status update.
    async fn update_status(&self, update: &ClaimedStatusUpdate) -> Outcome;
}

/// Builds the configured provider, checking its settings: each provider
/// checks its own, here and nowhere else, so a worker with a missing token or
/// a bad URL stops at start naming the setting.
pub fn from_args(args: &ProviderArgs) -> Result<Arc<dyn Provider>, String> {
    Ok(match args.provider {
        ProviderKind::Log => Arc::new(LogProvider),
        ProviderKind::Whatsapp => Arc::new(WhatsAppProvider::from_args(args)?),
        ProviderKind::Webhook => Arc::new(WebhookProvider::from_args(args)?),
    })
}
