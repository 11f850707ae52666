//! What a message carries: free-form text, or an approved WhatsApp template.
//!
//! WhatsApp delivers free-form text only within 24 hours of the user's last
//! message to the business; anything else must be a template approved in
//! Meta's WhatsApp Manager. A template is named by `name` and `language` and
//! filled with either `parameters` (the body's positional variables, the
//! common case) or `components` (Meta's own shape: header, body and button
//! parameters), which is checked here and then passed through as given.

use std::fmt;

use serde_json::{Map, Value, json};

use crate::{FieldError, MessageBody, ValidationErrors};

/// A message's content.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Text(MessageBody),
    Template(Template),
}

impl Content {
    /// The text, for a text message.
    pub fn text(&self) -> Option<&MessageBody> {
        match self {
            Content::Text(body) => Some(body),
            Content::Template(_) => None,
        }
    }

    /// The template, for a template message.
    pub fn template(&self) -> Option<&Template> {
        match self {
            Content::Text(_) => None,
            Content::Template(template) => Some(template),
        }
    }
}

/// An approved template and what fills it.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// `[a-z0-9_]{1,512}`, as WhatsApp Manager names templates.
    pub name: String,
    /// A locale code: `en_US`, `id`, `pt_BR`.
    pub language: String,
    pub fill: Fill,
}

/// What fills a template.
#[derive(Debug, Clone, PartialEq)]
pub enum Fill {
    /// No variables (`hello_world`).
    Nothing,
    /// The body's positional variables, `{{1}}`, `{{2}}`…
    Parameters(Vec<String>),
    /// Meta's `components`, as given (checked by [`Template::parse`]).
    Components(Vec<Value>),
}

/// Longest text of one parameter (Meta's limit for a body variable).
pub const MAX_PARAMETER_CHARS: usize = 1024;
/// Most parameters or components a template takes here.
const MAX_PARTS: usize = 100;

const COMPONENT_TYPES: [&str; 3] = ["header", "body", "button"];
const COMPONENT_FIELDS: [&str; 4] = ["type", "sub_type", "index", "parameters"];
/// The parameter types Meta's components take.
pub const PARAMETER_TYPES: [&str; 12] = [
    "text",
    "currency",
    "date_time",
    "image",
    "document",
    "video",
    "location",
    "payload",
    "coupon_code",
    "action",
    "product",
    "order_status",
];

impl Template {
    /// Reads `raw` (the request's `template` object); every problem is
    /// named by its path under `field` (`template.parameters[1]`).
    pub fn parse(field: &str, raw: &Value) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let Some(object) = raw.as_object() else {
            return Err(FieldError::new(field, "must be an object").into());
        };
        for key in object.keys() {
            if !["name", "language", "parameters", "components"].contains(&key.as_str()) {
                errors.push(FieldError::new(
                    format!("{field}.{key}"),
                    "is not a template field (name, language, parameters, components)",
                ));
            }
        }
        let name = errors.check(name(&format!("{field}.name"), object.get("name")));
        let language = errors.check(language(
            &format!("{field}.language"),
            object.get("language"),
        ));
        let fill = match (object.get("parameters"), object.get("components")) {
            (Some(_), Some(_)) => {
                errors.push(FieldError::new(
                    format!("{field}.components"),
                    "send either parameters or components, not both",
                ));
                None
            }
            (Some(parameters), None) => {
                parse_parameters(&format!("{field}.parameters"), parameters, &mut errors)
                    .map(Fill::Parameters)
            }
            (None, Some(components)) => {
                parse_components(&format!("{field}.components"), components, &mut errors)
                    .map(Fill::Components)
            }
            (None, None) => Some(Fill::Nothing),
        };
        match (name, language, fill) {
            (Some(name), Some(language), Some(fill)) if errors.is_empty() => Ok(Self {
                name,
                language,
                fill,
            }),
            _ => Err(errors),
        }
    }

    /// A template read back from the database, which only stores parsed
    /// ones (as [`Template::to_json`] wrote them).
    pub fn from_stored(value: &Value) -> Result<Self, String> {
        Self::parse("template", value).map_err(|errors| {
            let first = errors.0.first().map(ToString::to_string);
            format!("stored template: {}", first.unwrap_or_default())
        })
    }

    /// The template as clients sent it (and see it on the message).
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("name".into(), Value::String(self.name.clone()));
        object.insert("language".into(), Value::String(self.language.clone()));
        match &self.fill {
            Fill::Nothing => {}
            Fill::Parameters(parameters) => {
                object.insert("parameters".into(), json!(parameters));
            }
            Fill::Components(components) => {
                object.insert("components".into(), Value::Array(components.clone()));
            }
        }
        Value::Object(object)
    }

    /// Meta's `components` for the Cloud API: positional parameters become
    /// one `body` component of text parameters.
    pub fn components(&self) -> Vec<Value> {
        match &self.fill {
            Fill::Nothing => Vec::new(),
            Fill::Parameters(parameters) => vec![json!({
                "type": "body",
                "parameters": parameters.iter()
                    .map(|text| json!({"type": "text", "text": text}))
                    .collect::<Vec<_>>(),
            })],
            Fill::Components(components) => components.clone(),
        }
    }
}

impl fmt::Display for Template {
    /// `order_update (id)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.language)
    }
}

fn name(field: &str, raw: Option<&Value>) -> Result<String, FieldError> {
    let raw = string(field, raw)?;
    let valid = (1..=512).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(FieldError::new(
            field,
            "must be a template name: 1 to 512 lowercase letters, digits and underscores",
        ));
    }
    Ok(raw.to_owned())
}

/// `xx`, `xxx`, or either with `_XX` (`en_US`, `pt_BR`, `id`, `fil`).
fn language(field: &str, raw: Option<&Value>) -> Result<String, FieldError> {
    let raw = string(field, raw)?;
    let (lang, region) = match raw.split_once('_') {
        Some((lang, region)) => (lang, Some(region)),
        None => (raw, None),
    };
    let valid = (2..=3).contains(&lang.len())
        && lang.bytes().all(|b| b.is_ascii_lowercase())
        && region.is_none_or(|r| r.len() == 2 && r.bytes().all(|b| b.is_ascii_uppercase()));
    if !valid {
        return Err(FieldError::new(
            field,
            "must be a locale code such as en_US, id or pt_BR",
        ));
    }
    Ok(raw.to_owned())
}

fn string<'a>(field: &str, raw: Option<&'a Value>) -> Result<&'a str, FieldError> {
    match raw {
        None | Some(Value::Null) => Err(FieldError::new(field, "is required")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(FieldError::new(field, "must be a string")),
    }
}

fn array<'a>(field: &str, raw: &'a Value, errors: &mut ValidationErrors) -> Option<&'a Vec<Value>> {
    match raw.as_array() {
        Some(items) if items.len() <= MAX_PARTS => Some(items),
        Some(_) => {
            errors.push(FieldError::new(
                field,
                format!("must have at most {MAX_PARTS} items"),
            ));
            None
        }
        None => {
            errors.push(FieldError::new(field, "must be an array"));
            None
        }
    }
}

/// A variable's text, as Meta takes it: not blank, at most 1,024
/// characters, no line breaks or tabs, no more than four spaces in a row.
fn parameter_text(field: &str, raw: Option<&Value>) -> Result<String, FieldError> {
    let text = string(field, raw)?;
    if text.trim().is_empty() {
        return Err(FieldError::new(field, "must not be blank"));
    }
    if text.chars().count() > MAX_PARAMETER_CHARS {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_PARAMETER_CHARS} characters"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain line breaks, tabs or other control characters (WhatsApp refuses them in a variable)",
        ));
    }
    if text.contains("     ") {
        return Err(FieldError::new(
            field,
            "must not contain more than four spaces in a row (WhatsApp refuses them in a variable)",
        ));
    }
    Ok(text.to_owned())
}

fn parse_parameters(
    field: &str,
    raw: &Value,
    errors: &mut ValidationErrors,
) -> Option<Vec<String>> {
    let items = array(field, raw, errors)?;
    let parsed: Vec<Option<String>> = items
        .iter()
        .enumerate()
        .map(|(i, item)| errors.check(parameter_text(&format!("{field}[{i}]"), Some(item))))
        .collect();
    parsed.into_iter().collect()
}

fn parse_components(field: &str, raw: &Value, errors: &mut ValidationErrors) -> Option<Vec<Value>> {
    let mut items = array(field, raw, errors)?.clone();
    let before = errors.0.len();
    for (i, component) in items.iter_mut().enumerate() {
        let field = format!("{field}[{i}]");
        whole_index(component);
        check_component(&field, component, errors);
        // Passed through beyond what is checked above: Postgres cannot
        // store U+0000 in jsonb, anywhere in it.
        refuse_nul(&field, component, errors);
    }
    (errors.0.len() == before).then_some(items)
}

/// A button's `index` written as a whole number with a fraction (`9.0`) is
/// the number 9 in JSON (and to a JSON Schema validator): make it `9`, the
/// form Meta expects.
fn whole_index(component: &mut Value) {
    if let Some(index) = component.get_mut("index")
        && let Some(number) = index.as_f64()
        && index.as_u64().is_none()
        && number.fract() == 0.0
        && (0.0..=9.0).contains(&number)
    {
        *index = Value::from(number as u64);
    }
}

/// Names each string (a value or a key) under `value` that holds U+0000.
fn refuse_nul(field: &str, value: &Value, errors: &mut ValidationErrors) {
    const NUL: &str = "must not contain NUL characters (U+0000)";
    match value {
        Value::String(text) if text.contains('\0') => {
            errors.push(FieldError::new(field, NUL));
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                refuse_nul(&format!("{field}[{i}]"), item, errors);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let path = format!("{field}.{}", key.replace('\0', "\\u0000"));
                if key.contains('\0') {
                    errors.push(FieldError::new(path.clone(), NUL));
                }
                refuse_nul(&path, item, errors);
            }
        }
        _ => {}
    }
}

fn check_component(field: &str, component: &Value, errors: &mut ValidationErrors) {
    let Some(object) = component.as_object() else {
        errors.push(FieldError::new(field, "must be an object"));
        return;
    };
    for key in object.keys() {
        if !COMPONENT_FIELDS.contains(&key.as_str()) {
            errors.push(FieldError::new(
                format!("{field}.{key}"),
                "is not a component field (type, sub_type, index, parameters)",
            ));
        }
    }
    let kind = match string(&format!("{field}.type"), object.get("type")) {
        Ok(kind) if COMPONENT_TYPES.contains(&kind) => kind,
        Ok(_) => {
            errors.push(FieldError::new(
                format!("{field}.type"),
                "must be header, body or button",
            ));
            return;
        }
        Err(err) => {
            errors.push(err);
            return;
        }
    };
    if kind == "button" {
        if let Err(err) = string(&format!("{field}.sub_type"), object.get("sub_type")) {
            errors.push(err);
        }
        let index = object.get("index");
        let index_ok = match index {
            Some(Value::String(s)) => s.len() == 1 && s.bytes().all(|b| b.is_ascii_digit()),
            Some(Value::Number(n)) => n.as_u64().is_some_and(|n| n <= 9),
            _ => false,
        };
        if !index_ok {
            errors.push(FieldError::new(
                format!("{field}.index"),
                "must be the button's position, 0 to 9",
            ));
        }
    }
    if let Some(parameters) = object.get("parameters") {
        let field = format!("{field}.parameters");
        if let Some(items) = array(&field, parameters, errors) {
            for (i, parameter) in items.iter().enumerate() {
                check_parameter(&format!("{field}[{i}]"), parameter, errors);
            }
        }
    }
}

fn check_parameter(field: &str, parameter: &Value, errors: &mut ValidationErrors) {
    let Some(object) = parameter.as_object() else {
        errors.push(FieldError::new(field, "must be an object with a type"));
        return;
    };
    match string(&format!("{field}.type"), object.get("type")) {
        Ok("text") => {
            if let Err(err) = parameter_text(&format!("{field}.text"), object.get("text")) {
                errors.push(err);
            }
            if let Some(name) = object.get("parameter_name")
                && !name.as_str().is_some_and(|n| {
                    !n.is_empty()
                        && n.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                })
            {
                errors.push(FieldError::new(
                    format!("{field}.parameter_name"),
                    "must be a variable's name: lowercase letters, digits and underscores",
                ));
            }
        }
        Ok(kind) if PARAMETER_TYPES.contains(&kind) => {
            if object.get(kind).is_none() && kind != "payload" && kind != "coupon_code" {
                errors.push(FieldError::new(
                    format!("{field}.{kind}"),
                    format!("is required for a {kind} parameter"),
                ));
            }
        }
        Ok(_) => errors.push(FieldError::new(
            format!("{field}.type"),
            format!("must be one of {}", PARAMETER_TYPES.join(", ")),
        )),
        Err(err) => errors.push(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(raw: Value) -> Vec<String> {
        Template::parse("template", &raw)
            .expect_err("invalid")
            .0
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn positional_parameters_become_one_body_component() {
        let t = Template::parse(
            "template",
            &json!({"name": "order_update", "language": "id", "parameters": ["Budi", "#1234"]}),
        )
        .unwrap();
        assert_eq!(t.to_string(), "order_update (id)");
        assert_eq!(
            t.to_json(),
            json!({"name": "order_update", "language": "id", "parameters": ["Budi", "#1234"]})
        );
        assert_eq!(
            t.components(),
            vec![json!({"type": "body", "parameters": [
                {"type": "text", "text": "Budi"}, {"type": "text", "text": "#1234"}]})]
        );
        assert_eq!(Template::from_stored(&t.to_json()).unwrap(), t);
    }

    #[test]
    fn a_template_without_variables_has_no_components() {
        let t = Template::parse(
            "template",
            &json!({"name": "hello_world", "language": "en_US"}),
        )
        .unwrap();
        assert_eq!(t.fill, Fill::Nothing);
        assert!(t.components().is_empty());
        assert_eq!(
            t.to_json(),
            json!({"name": "hello_world", "language": "en_US"})
        );
        assert_eq!(Template::from_stored(&t.to_json()).unwrap(), t);
    }

    #[test]
    fn components_pass_through_as_given() {
        let components = json!([
            {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://example.com/a.png"}}]},
            {"type": "body", "parameters": [{"type": "text", "text": "Ada"},
                                            {"type": "text", "parameter_name": "order", "text": "#1"}]},
            {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "abc"}]},
            {"type": "button", "sub_type": "quick_reply", "index": 1, "parameters": [{"type": "payload", "payload": "YES"}]}
        ]);
        let t = Template::parse(
            "template",
            &json!({"name": "order_update", "language": "en_US", "components": components}),
        )
        .unwrap();
        assert_eq!(Value::Array(t.components()), components);
        assert_eq!(Template::from_stored(&t.to_json()).unwrap(), t);
    }

    #[test]
    fn every_problem_is_named_by_its_path() {
        assert_eq!(fields(json!("hello")), ["template"]);
        assert_eq!(fields(json!({})), ["template.name", "template.language"]);
        assert_eq!(
            fields(json!({"name": "Order-Update", "language": "english"})),
            ["template.name", "template.language"]
        );
        assert_eq!(
            fields(json!({"name": "a", "language": "id", "parameter": []})),
            ["template.parameter"]
        );
        assert_eq!(
            fields(json!({"name": "a", "language": "id", "parameters": [], "components": []})),
            ["template.components"]
        );
        assert_eq!(
            fields(json!({"name": "a", "language": "id",
                          "parameters": ["ok", "", "two\nlines", 5, "wide     gap"]})),
            [
                "template.parameters[1]",
                "template.parameters[2]",
                "template.parameters[3]",
                "template.parameters[4]"
            ]
        );
        assert_eq!(
            fields(json!({"name": "a", "language": "id", "parameters": ["x".repeat(1025)]})),
            ["template.parameters[0]"]
        );
        assert_eq!(
            fields(json!({"name": "a", "language": "id", "components": [
                {"type": "footer"},
                {"type": "body", "parameters": [{"type": "text"}, {"text": "x"}, "x", {"type": "image"}]},
                {"type": "button", "parameters": []},
                {"type": "body", "paramters": []}
            ]})),
            [
                "template.components[0].type",
                "template.components[1].parameters[0].text",
                "template.components[1].parameters[1].type",
                "template.components[1].parameters[2]",
                "template.components[1].parameters[3].image",
                "template.components[2].sub_type",
                "template.components[2].index",
                "template.components[3].paramters"
            ]
        );
    }

    #[test]
    fn language_codes() {
        for ok in ["en_US", "id", "pt_BR", "fil", "zh_CN"] {
            assert!(language("l", Some(&json!(ok))).is_ok(), "{ok}");
        }
        for bad in ["en-US", "EN", "e", "en_us", "english", "en_USA", ""] {
            assert!(language("l", Some(&json!(bad))).is_err(), "{bad}");
        }
    }
}
