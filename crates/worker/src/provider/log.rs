//! The `log` provider: accepts everything and logs it; no network. The
//! default, so a first run works end to end.

use async_trait::async_trait;
use kurir_core::Content;

use super::{ClaimedMessage, ClaimedStatusUpdate, Outcome, Provider};

/// Logs each message and status update (never the text itself, only its
/// length) and reports it delivered.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogProvider;

#[async_trait]
impl Provider for LogProvider {
    fn name(&self) -> &'static str {
        "log"
    }

    async fn send_message(&self, message: &ClaimedMessage) -> Outcome {
        // The length of a text, never the text; a template by its name.
        match &message.content {
            Content::Text(body) => tracing::info!(
                provider = "log",
                message_id = %message.id,
                user_id = %message.user_id,
                to = %message.to,
                body_chars = body.as_str().chars().count(),
                attempt = message.attempt,
                "message delivered (log provider)"
            ),
            Content::Template(template) => tracing::info!(
                provider = "log",
                message_id = %message.id,
                user_id = %message.user_id,
                to = %message.to,
                template = %template.name,
                language = %template.language,
                attempt = message.attempt,
                "template message delivered (log provider)"
            ),
        }
        Outcome::Delivered {
            provider_message_id: Some(format!("log-{}", message.id)),
            http_status: None,
        }
    }

    async fn update_status(&self, update: &ClaimedStatusUpdate) -> Outcome {
        tracing::info!(
            provider = "log",
            status_update_id = %update.id,
            user_id = %update.user_id,
            to = %update.phone_number,
            status_chars = update.status.as_str().chars().count(),
            attempt = update.attempt,
            "status update applied (log provider)"
        );
        Outcome::Delivered {
            provider_message_id: None,
            http_status: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::test_support::{message, status};

    #[tokio::test]
    async fn log_provider_delivers() {
        let message = message();
        assert_eq!(LogProvider.name(), "log");
        assert_eq!(
            LogProvider.send_message(&message).await,
            Outcome::Delivered {
                provider_message_id: Some(format!("log-{}", message.id)),
                http_status: None,
            }
        );
        assert_eq!(
            LogProvider.update_status(&status()).await,
            Outcome::Delivered {
                provider_message_id: None,
                http_status: None,
            }
        );
    }
}
