//! What kurir does about each WhatsApp (Meta) error code (the table in
//! docs/configuration.md, "Providers"; Meta publishes no such table, this
//! one follows its error reference),
//! and what it tells the sender to do about it in `last_error.detail`.

use std::time::Duration;

use kurir_core::{Content, Template};

/// How an error code is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Treatment {
    /// Try again with backoff (and never before a `Retry-After`).
    Retry,
    /// Try again, but hours later: [`MUCH_LATER`].
    RetryMuchLater,
    /// This message will never go through; others may.
    PermanentForMessage,
    /// This recipient cannot be sent this (or anything): fail it.
    PermanentForRecipient,
    /// The sending account has a problem an operator must fix: fail the
    /// message and raise an alert.
    StopTheSender,
}

/// The wait before retrying a [`Treatment::RetryMuchLater`] error: 131049,
/// WhatsApp's cap on marketing messages one user gets, lifts over hours.
/// A message older than `KURIR_RETRY_MAX_AGE` by then fails instead.
pub(crate) const MUCH_LATER: Duration = Duration::from_secs(6 * 60 * 60);

/// The table, row by row.
pub(crate) const RETRY: [i64; 9] = [1, 2, 4, 80007, 130429, 131000, 131016, 131056, 131057];
pub(crate) const RETRY_MUCH_LATER: [i64; 1] = [131049];
pub(crate) const PERMANENT_FOR_MESSAGE: [i64; 11] = [
    100, 131008, 131009, 131051, 131053, 132000, 132001, 132007, 132012, 132015, 132016,
];
pub(crate) const PERMANENT_FOR_RECIPIENT: [i64; 5] = [131026, 131021, 131047, 131050, 130472];
pub(crate) const STOP_THE_SENDER: [i64; 11] = [
    0, 3, 10, 190, 131005, 131031, 131042, 131045, 131048, 133010, 368,
];

/// The treatment of a known code; `None` for codes the table does not
/// name (then the HTTP status decides: 429 and 5xx retry, other 4xx fail).
pub(crate) fn treatment(code: i64) -> Option<Treatment> {
    let rows: [(&[i64], Treatment); 5] = [
        (&RETRY, Treatment::Retry),
        (&RETRY_MUCH_LATER, Treatment::RetryMuchLater),
        (&PERMANENT_FOR_MESSAGE, Treatment::PermanentForMessage),
        (&PERMANENT_FOR_RECIPIENT, Treatment::PermanentForRecipient),
        (&STOP_THE_SENDER, Treatment::StopTheSender),
    ];
    rows.into_iter()
        .find(|(codes, _)| codes.contains(&code))
        .map(|(_, treatment)| treatment)
}

/// What the sender should know or do about `code`, before Meta's own
/// words; `content` is what was sent (`None` for a status update).
pub(crate) fn advice(code: i64, content: Option<&Content>) -> Option<String> {
    let template = content.and_then(Content::template);
    let named = |t: Option<&Template>| {
        t.map_or_else(|| "the template".to_owned(), |t| format!("template {t}"))
    };
    Some(match code {
        131047 => match template {
            None => "the user last wrote to this number more than 24 hours ago (or never), and outside WhatsApp's 24-hour window only templates are delivered: send this as a template".to_owned(),
            Some(t) => format!("WhatsApp refused {} as a re-engagement message outside the 24-hour window", named(Some(t))),
        },
        132001 => format!(
            "{} does not exist, or is not approved in that language: check its name and language in WhatsApp Manager",
            named(template)
        ),
        132000 => format!(
            "{} takes a different number of parameters than were sent: send one for each of its variables",
            named(template)
        ),
        132012 => format!("a parameter of {} has the wrong format for its variable", named(template)),
        132007 => format!("{} breaks WhatsApp's formatting rules for its parameters", named(template)),
        132015 => format!("{} is paused by WhatsApp for low quality: edit it or use another", named(template)),
        132016 => format!("{} is disabled by WhatsApp for low quality: use another", named(template)),
        131026 => "the recipient cannot receive WhatsApp messages (no WhatsApp account, an old app, or they have not accepted WhatsApp's terms)".to_owned(),
        131021 => "the recipient is the sending number itself".to_owned(),
        131050 => "the user has stopped marketing messages from this business".to_owned(),
        130472 => "WhatsApp holds back marketing messages to this user (a Meta experiment)".to_owned(),
        131049 => "WhatsApp caps the marketing messages one user gets; kurir tries again hours later".to_owned(),
        190 => "the access token is invalid or expired: set a new KURIR_WHATSAPP_TOKEN (operator)".to_owned(),
        0 | 3 | 10 | 131005 => "the app's token lacks permission to send from this number (whatsapp_business_messaging): fix the app's permissions or token (operator)".to_owned(),
        131031 => "the WhatsApp Business Account is locked or restricted: see WhatsApp Manager (operator)".to_owned(),
        131042 => "the WhatsApp Business Account has a payment problem: fix its payment method in WhatsApp Manager (operator)".to_owned(),
        131045 => "the sending number is not registered with the Cloud API: register it (operator)".to_owned(),
        133010 => "the sending number is not registered with the Cloud API: register it (operator)".to_owned(),
        131048 => "WhatsApp blocked messages from this number for spam (too many blocks or reports): check its quality rating (operator)".to_owned(),
        368 => "the sending account is temporarily blocked for policy violations: see WhatsApp Manager (operator)".to_owned(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_in_one_row_only() {
        let all: Vec<i64> = [
            &RETRY[..],
            &RETRY_MUCH_LATER,
            &PERMANENT_FOR_MESSAGE,
            &PERMANENT_FOR_RECIPIENT,
            &STOP_THE_SENDER,
        ]
        .concat();
        for code in &all {
            assert_eq!(all.iter().filter(|c| *c == code).count(), 1, "{code}");
        }
        assert_eq!(treatment(131047), Some(Treatment::PermanentForRecipient));
        assert_eq!(treatment(999_999), None);
    }

    #[test]
    fn advice_names_the_template() {
        let template = Template::parse(
            "t",
            &serde_json::json!({"name": "order_update", "language": "id", "parameters": ["a"]}),
        )
        .unwrap();
        let content = Content::Template(template);
        let said = advice(132000, Some(&content)).unwrap();
        assert!(said.contains("order_update (id)"), "{said}");
        let text = Content::Text(kurir_core::MessageBody::parse("m", "hi").unwrap());
        assert!(advice_for_text_mentions_templates(&text));
        // Every stop-the-sender code says what to fix.
        for code in STOP_THE_SENDER {
            assert!(advice(code, None).unwrap().contains("(operator)"), "{code}");
        }
    }

    fn advice_for_text_mentions_templates(text: &Content) -> bool {
        advice(131047, Some(text))
            .unwrap()
            .contains("send this as a template")
    }
}
