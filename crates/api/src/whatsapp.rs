//! Reading WhatsApp's webhook notifications (Meta's `whatsapp_business_account`
//! object): the statuses of messages sent, and incoming messages.
//!
//! Meta's payload has changed under its users before and is leaner than its
//! documentation, so nothing here is required but what a receipt cannot do
//! without: every identifier is optional, a value of an unexpected type
//! counts as absent, and what this version does not know is skipped, never
//! refused. Variants read (see the tests below and docs/api.md, "Receipts"):
//! - statuses with or without a `contacts` array (April 2026 on: `wa_id`
//!   and the business-scoped `user_id`; `recipient_user_id` on the status,
//!   `recipient_id` absent for a message sent to a business-scoped id);
//! - `errors` on the status or on `value`; `pricing`/`conversation` absent;
//! - `played` (a voice message played) counts as `read`;
//! - a `timestamp` as a string (Meta's) or a number;
//! - incoming messages with `from` and/or `from_user_id`, their ids also
//!   found in `contacts`.

use chrono::{DateTime, Utc};
use kurir_core::LastError;
use kurir_store::receipts::{Inbound, Receipt, ReceiptStatus};
use serde_json::Value;
use uuid::Uuid;

/// What one webhook POST carried that kurir acts on.
#[derive(Debug, Default, PartialEq)]
pub struct Notifications {
    pub receipts: Vec<Receipt>,
    pub inbound: Vec<Inbound>,
    /// Notifications kurir has no use for: other fields (account updates,
    /// templates), statuses of a kind it does not track, entries that name
    /// no message or no number.
    pub ignored: u64,
}

/// Reads a webhook body; `now` stands in for a missing timestamp.
pub fn parse(body: &Value, now: DateTime<Utc>) -> Notifications {
    let mut out = Notifications::default();
    for entry in array(body, "entry") {
        for change in array(entry, "changes") {
            let value = &change["value"];
            let is_messages = change["field"].as_str().is_none_or(|f| f == "messages");
            let Some(phone_number_id) =
                text(&value["metadata"], "phone_number_id").filter(|_| is_messages)
            else {
                out.ignored += 1;
                continue;
            };
            // A failure Meta reports for the whole change, not one status.
            let value_error = array(value, "errors").first().map(meta_error);
            for status in array(value, "statuses") {
                match receipt(status, &phone_number_id, value_error.as_ref(), now) {
                    Some(receipt) => out.receipts.push(receipt),
                    None => out.ignored += 1,
                }
            }
            let contacts = array(value, "contacts");
            for message in array(value, "messages") {
                match inbound(message, contacts, &phone_number_id, now) {
                    Some(inbound) => out.inbound.push(inbound),
                    None => out.ignored += 1,
                }
            }
        }
    }
    out
}

fn receipt(
    status: &Value,
    phone_number_id: &str,
    value_error: Option<&LastError>,
    now: DateTime<Utc>,
) -> Option<Receipt> {
    let kind = match status["status"].as_str()? {
        "sent" => ReceiptStatus::Sent,
        "delivered" => ReceiptStatus::Delivered,
        "read" | "played" => ReceiptStatus::Read,
        "failed" => ReceiptStatus::Failed,
        _ => return None,
    };
    let message_id =
        text(status, "biz_opaque_callback_data").and_then(|s| Uuid::parse_str(&s).ok());
    let wamid = text(status, "id");
    if message_id.is_none() && wamid.is_none() {
        return None;
    }
    let error = (kind == ReceiptStatus::Failed).then(|| {
        array(status, "errors")
            .first()
            .map(meta_error)
            .or_else(|| value_error.cloned())
            .unwrap_or_else(|| LastError {
                code: "failed".into(),
                detail: "WhatsApp reported the message failed and gave no reason".into(),
                retryable: false,
            })
    });
    Some(Receipt {
        phone_number_id: phone_number_id.to_owned(),
        message_id,
        wamid,
        status: kind,
        at: timestamp(&status["timestamp"]).unwrap_or(now),
        error,
    })
}

fn inbound(
    message: &Value,
    contacts: &[Value],
    phone_number_id: &str,
    now: DateTime<Utc>,
) -> Option<Inbound> {
    // A system message (the user changed numbers) is WhatsApp's, not theirs.
    if message["type"].as_str() == Some("system") {
        return None;
    }
    let mut wa_id = text(message, "from");
    let mut user_id = text(message, "from_user_id");
    // The contact this message is from: the one sharing an id with it, or
    // the only one.
    let contact = contacts
        .iter()
        .find(|c| {
            (wa_id.is_some() && text(c, "wa_id") == wa_id)
                || (user_id.is_some() && text(c, "user_id") == user_id)
        })
        .or(match contacts {
            [only] if wa_id.is_none() && user_id.is_none() => Some(only),
            _ => None,
        });
    if let Some(contact) = contact {
        wa_id = wa_id.or_else(|| text(contact, "wa_id"));
        user_id = user_id.or_else(|| text(contact, "user_id"));
    }
    if wa_id.is_none() && user_id.is_none() {
        return None;
    }
    Some(Inbound {
        phone_number_id: phone_number_id.to_owned(),
        wa_id,
        user_id,
        at: timestamp(&message["timestamp"]).unwrap_or(now),
    })
}

/// Meta's error object as `last_error`: its code, and its words
/// (`title`, `message`, `error_data.details`, whichever it sent).
fn meta_error(error: &Value) -> LastError {
    let code = match &error["code"] {
        Value::Number(n) => n.to_string(),
        Value::String(s) if !s.is_empty() => s.clone(),
        _ => "failed".to_owned(),
    };
    let title = text(error, "title").or_else(|| text(error, "message"));
    let details = text(&error["error_data"], "details");
    let detail = match (title, details) {
        (Some(title), Some(details)) if title != details => format!("{title}: {details}"),
        (Some(one), _) | (None, Some(one)) => one,
        (None, None) => "WhatsApp reported the message failed and gave no reason".to_owned(),
    };
    LastError {
        code,
        detail,
        retryable: false,
    }
}

/// The array at `key`, or none.
fn array<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value[key].as_array().map_or(&[], Vec::as_slice)
}

/// The non-empty string at `key` (a number counts, as its digits).
fn text(value: &Value, key: &str) -> Option<String> {
    match &value[key] {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Unix seconds, as Meta's string or as a number.
fn timestamp(value: &Value) -> Option<DateTime<Utc>> {
    let secs = match value {
        Value::String(s) => s.trim().parse::<i64>().ok()?,
        Value::Number(n) => n.as_i64()?,
        _ => return None,
    };
    DateTime::from_timestamp(secs, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MSG: &str = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn change(value: Value) -> Value {
        json!({"object": "whatsapp_business_account",
               "entry": [{"id": "1000", "changes": [{"field": "messages", "value": value}]}]})
    }

    #[test]
    fn a_current_status_with_contacts_and_business_scoped_ids() {
        // The April 2026 shape: contacts with wa_id and user_id, the
        // status's recipient_user_id, per-message pricing, no conversation.
        let body = change(json!({
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": "106540352242922"},
            "contacts": [{"wa_id": "6281234567890", "user_id": "ID.13491208655302741918"}],
            "statuses": [{"id": "wamid.HBgN", "status": "delivered", "timestamp": "1750263773",
                          "recipient_id": "6281234567890", "recipient_user_id": "ID.13491208655302741918",
                          "biz_opaque_callback_data": MSG,
                          "pricing": {"billable": true, "pricing_model": "PMP", "category": "utility", "type": "regular"}}]
        }));
        let parsed = parse(&body, now());
        assert_eq!(parsed.ignored, 0);
        assert_eq!(
            parsed.receipts,
            vec![Receipt {
                phone_number_id: "106540352242922".into(),
                message_id: Some(Uuid::parse_str(MSG).unwrap()),
                wamid: Some("wamid.HBgN".into()),
                status: ReceiptStatus::Delivered,
                at: DateTime::from_timestamp(1_750_263_773, 0).unwrap(),
                error: None,
            }]
        );
    }

    #[test]
    fn a_lean_failed_status_takes_the_error_from_value() {
        // No recipient_id (sent to a business-scoped id), contacts with
        // wa_id only, the error on `value`, a numeric timestamp.
        let body = change(json!({
            "metadata": {"phone_number_id": "42"},
            "contacts": [{"wa_id": "6281234567890"}],
            "errors": [{"code": 131047, "title": "Re-engagement message",
                        "error_data": {"details": "More than 24 hours have passed since the recipient last replied."}}],
            "statuses": [{"id": "wamid.X", "status": "failed", "timestamp": 1750263773}]
        }));
        let parsed = parse(&body, now());
        let receipt = &parsed.receipts[0];
        assert_eq!(receipt.status, ReceiptStatus::Failed);
        assert_eq!(receipt.message_id, None);
        let error = receipt.error.as_ref().unwrap();
        assert_eq!(error.code, "131047");
        assert_eq!(
            error.detail,
            "Re-engagement message: More than 24 hours have passed since the recipient last replied."
        );
        assert!(!error.retryable);
    }

    #[test]
    fn the_status_error_wins_over_the_value_error() {
        let body = change(json!({
            "metadata": {"phone_number_id": "42"},
            "errors": [{"code": 1, "title": "value"}],
            "statuses": [{"id": "wamid.X", "status": "failed",
                          "errors": [{"code": "131026", "message": "Message undeliverable"}]}]
        }));
        let error = parse(&body, now()).receipts[0].error.clone().unwrap();
        assert_eq!(
            (error.code.as_str(), error.detail.as_str()),
            ("131026", "Message undeliverable")
        );
    }

    #[test]
    fn played_is_read_and_unknown_kinds_are_ignored() {
        let body = change(json!({
            "metadata": {"phone_number_id": "42"},
            "statuses": [
                {"id": "wamid.A", "status": "played", "timestamp": "1"},
                {"id": "wamid.B", "status": "deleted", "timestamp": "1"},
                {"status": "read"},
                {"id": "wamid.C", "status": "read", "biz_opaque_callback_data": "not-a-uuid"}
            ]
        }));
        let parsed = parse(&body, now());
        assert_eq!(parsed.ignored, 2);
        assert_eq!(parsed.receipts.len(), 2);
        assert_eq!(parsed.receipts[0].status, ReceiptStatus::Read);
        // callback data that is not a kurir id: matched by the wamid alone
        assert_eq!(parsed.receipts[1].message_id, None);
        assert_eq!(parsed.receipts[1].wamid.as_deref(), Some("wamid.C"));
        assert_eq!(parsed.receipts[1].at, now());
    }

    #[test]
    fn the_older_shape_without_contacts_is_read() {
        let body = change(json!({
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": "42"},
            "statuses": [{"id": "wamid.A", "status": "sent", "timestamp": "1700000000",
                          "recipient_id": "6281234567890",
                          "conversation": {"id": "c1", "origin": {"type": "utility"}},
                          "pricing": {"billable": true, "pricing_model": "CBP", "category": "utility"}}]
        }));
        let parsed = parse(&body, now());
        assert_eq!(parsed.receipts.len(), 1);
        assert_eq!(parsed.receipts[0].status, ReceiptStatus::Sent);
    }

    #[test]
    fn several_entries_and_changes_are_all_read_and_other_fields_ignored() {
        let status = |id: &str| json!({"id": id, "status": "read", "timestamp": "5"});
        let body = json!({"object": "whatsapp_business_account", "entry": [
            {"id": "1", "changes": [
                {"field": "messages", "value": {"metadata": {"phone_number_id": "A"}, "statuses": [status("w1"), status("w2")]}},
                {"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}}
            ]},
            {"id": "2", "changes": [
                {"field": "messages", "value": {"metadata": {"phone_number_id": "B"}, "statuses": [status("w3")]}}
            ]}
        ]});
        let parsed = parse(&body, now());
        assert_eq!(parsed.ignored, 1);
        let numbers: Vec<_> = parsed
            .receipts
            .iter()
            .map(|r| r.phone_number_id.as_str())
            .collect();
        assert_eq!(numbers, ["A", "A", "B"]);
    }

    #[test]
    fn incoming_messages_name_their_user_by_either_id() {
        let body = change(json!({
            "metadata": {"phone_number_id": "42"},
            "contacts": [
                {"profile": {"name": "Budi"}, "wa_id": "6281234567890", "user_id": "ID.1"},
                {"user_id": "ID.2"}
            ],
            "messages": [
                {"from": "6281234567890", "id": "wamid.in1", "timestamp": "1750000000", "type": "text", "text": {"body": "halo"}},
                {"from_user_id": "ID.2", "id": "wamid.in2", "timestamp": "1750000001", "type": "text", "text": {"body": "hi"}},
                {"from": "6289999", "type": "system", "system": {"body": "changed number"}}
            ]
        }));
        let parsed = parse(&body, now());
        assert_eq!(parsed.ignored, 1);
        assert_eq!(
            parsed.inbound,
            vec![
                Inbound {
                    phone_number_id: "42".into(),
                    wa_id: Some("6281234567890".into()),
                    user_id: Some("ID.1".into()),
                    at: DateTime::from_timestamp(1_750_000_000, 0).unwrap(),
                },
                Inbound {
                    phone_number_id: "42".into(),
                    wa_id: None,
                    user_id: Some("ID.2".into()),
                    at: DateTime::from_timestamp(1_750_000_001, 0).unwrap(),
                },
            ]
        );
    }

    #[test]
    fn nothing_in_a_strange_body_panics() {
        for body in [
            json!(null),
            json!([]),
            json!({"entry": 5}),
            json!({"entry": [{"changes": [{"value": {"metadata": {"phone_number_id": 7}, "statuses": [{"id": 9, "status": "read", "timestamp": "soon"}], "messages": [5]}}]}]}),
        ] {
            let _ = parse(&body, now());
        }
    }
}
