//! The approved message templates the sandbox knows, and the check Meta makes
//! of every template send against them: the name must exist in the requested
//! language, and the body must carry as many parameters as the template has.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::meta::MetaError;

/// The setting that names the templates file, for error messages.
pub(crate) const TEMPLATES_VAR: &str = "KURIR_SANDBOX_TEMPLATES";

/// One entry of the templates file. Unknown fields are refused so a typo
/// (`body_params`) stops the sandbox instead of silently meaning 0.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TemplateDef {
    pub name: String,
    /// Language codes exactly as senders put them in `language.code`
    /// (`en_US`, `id`); matched case-sensitively, like Meta.
    pub languages: Vec<String>,
    /// How many parameters the body takes; absent means none.
    #[serde(default)]
    pub body_parameters: usize,
}

/// Every known (name, language) pair and its body parameter count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Templates {
    /// name → language code → body parameters.
    by_name: HashMap<String, HashMap<String, usize>>,
}

impl Templates {
    /// The templates every sandbox has: Meta's sample `hello_world` and the
    /// `order_update` kurir's docs and demos use.
    pub(crate) fn builtin() -> Self {
        let mut templates = Self::default();
        for def in [
            TemplateDef {
                name: "hello_world".into(),
                languages: vec!["en_US".into()],
                body_parameters: 0,
            },
            TemplateDef {
                name: "order_update".into(),
                languages: vec!["en_US".into(), "id".into()],
                body_parameters: 2,
            },
        ] {
            templates.add(&def);
        }
        templates
    }

    /// The built-in templates plus those of the file at `path`, if any. A
    /// file entry replaces a built-in one for the same name and language, so
    /// a file can also redefine `order_update`.
    ///
    /// The error names [`TEMPLATES_VAR`] and the path, and says what is wrong.
    pub(crate) fn load(path: Option<&Path>) -> Result<Self, String> {
        let mut templates = Self::builtin();
        let Some(path) = path else {
            return Ok(templates);
        };
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{TEMPLATES_VAR}: cannot read {shown}: {e}"))?;
        let defs: Vec<TemplateDef> = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{TEMPLATES_VAR}: {shown} is not a JSON list of templates ({e}); expected e.g. \
                 [{{\"name\":\"otp\",\"languages\":[\"en_US\",\"id\"],\"body_parameters\":1}}]"
            )
        })?;
        let mut seen = Templates::default();
        for (i, def) in defs.iter().enumerate() {
            check_def(def).map_err(|e| format!("{TEMPLATES_VAR}: {shown}: template {i}: {e}"))?;
            for language in &def.languages {
                if seen.body_parameters(&def.name, language).is_some() {
                    return Err(format!(
                        "{TEMPLATES_VAR}: {shown}: template {i}: {} in {language} is defined twice",
                        def.name
                    ));
                }
            }
            seen.add(def);
            templates.add(def);
        }
        Ok(templates)
    }

    fn add(&mut self, def: &TemplateDef) {
        let languages = self.by_name.entry(def.name.clone()).or_default();
        for language in &def.languages {
            languages.insert(language.clone(), def.body_parameters);
        }
    }

    fn body_parameters(&self, name: &str, language: &str) -> Option<usize> {
        self.by_name.get(name)?.get(language).copied()
    }

    /// Meta's check of a template send: 132001 when the name does not exist
    /// in `language`, 132000 when `body_parameters` differs from the template's.
    pub(crate) fn check(
        &self,
        name: &str,
        language: &str,
        body_parameters: usize,
    ) -> Result<(), MetaError> {
        match self.body_parameters(name, language) {
            None => Err(MetaError::template_not_found(name, language)),
            Some(expected) if expected != body_parameters => {
                Err(MetaError::template_param_count(body_parameters, expected))
            }
            Some(_) => Ok(()),
        }
    }
}

/// What serde cannot check: a name, at least one language, no blank codes.
fn check_def(def: &TemplateDef) -> Result<(), String> {
    if def.name.trim().is_empty() {
        return Err("name must not be empty".into());
    }
    if def.languages.is_empty() {
        return Err(format!("{} needs at least one language", def.name));
    }
    if def.languages.iter().any(|l| l.trim().is_empty()) {
        return Err(format!("{} has an empty language code", def.name));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::meta::codes;

    /// A file in the temp dir, removed when dropped.
    pub(crate) struct TempFile(pub PathBuf);

    impl TempFile {
        pub(crate) fn new(contents: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "kurir-sandbox-templates-{}-{}.json",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, contents).expect("write temp file");
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn builtin_templates_are_checked_by_name_language_and_count() {
        let t = Templates::builtin();
        assert!(t.check("hello_world", "en_US", 0).is_ok());
        assert!(t.check("order_update", "en_US", 2).is_ok());
        assert!(t.check("order_update", "id", 2).is_ok());

        let e = t.check("order_updat", "id", 2).expect_err("unknown name");
        assert_eq!(e.code, codes::TEMPLATE_NOT_FOUND);
        assert_eq!(e.status, 400);
        assert_eq!(
            e.details,
            "template name (order_updat) does not exist in id"
        );
        let e = t
            .check("hello_world", "id", 0)
            .expect_err("unknown language");
        assert_eq!(e.code, codes::TEMPLATE_NOT_FOUND);
        assert_eq!(
            e.details,
            "template name (hello_world) does not exist in id"
        );

        let e = t.check("order_update", "id", 1).expect_err("count");
        assert_eq!(e.code, codes::TEMPLATE_PARAM_COUNT_MISMATCH);
        assert_eq!(e.status, 400);
        assert_eq!(
            e.details,
            "body: number of localizable_params (1) does not match the expected number of params (2)"
        );
        assert!(t.check("hello_world", "en_US", 1).is_err());
    }

    #[test]
    fn file_templates_are_added_to_the_builtin_ones() {
        let file = TempFile::new(
            r#"[{"name":"otp","languages":["en_US","id"],"body_parameters":1},
                {"name":"welcome","languages":["id"]},
                {"name":"order_update","languages":["id"],"body_parameters":3}]"#,
        );
        let t = Templates::load(Some(&file.0)).expect("loads");
        assert!(t.check("otp", "en_US", 1).is_ok());
        assert!(t.check("otp", "id", 1).is_ok());
        assert!(t.check("otp", "id", 0).is_err());
        assert!(
            t.check("welcome", "id", 0).is_ok(),
            "body_parameters defaults to 0"
        );
        assert!(t.check("hello_world", "en_US", 0).is_ok(), "built-ins kept");
        assert!(
            t.check("order_update", "id", 3).is_ok(),
            "file replaces a built-in"
        );
        assert!(
            t.check("order_update", "en_US", 2).is_ok(),
            "other languages kept"
        );
        assert_eq!(Templates::load(None).expect("none"), Templates::builtin());
        let empty = TempFile::new("[]");
        assert_eq!(
            Templates::load(Some(&empty.0)).expect("empty list"),
            Templates::builtin()
        );
    }

    #[test]
    fn bad_files_are_refused_naming_the_setting() {
        let missing = std::env::temp_dir().join("kurir-sandbox-no-such-templates.json");
        let e = Templates::load(Some(&missing)).expect_err("missing");
        assert!(e.starts_with("KURIR_SANDBOX_TEMPLATES: cannot read"), "{e}");
        for (contents, says) in [
            ("not json", "is not a JSON list of templates"),
            (r#"{"name":"otp"}"#, "is not a JSON list of templates"),
            (
                r#"[{"name":"otp","languages":["id"],"body_params":1}]"#,
                "body_params",
            ),
            (
                r#"[{"name":"otp","languages":["id"],"body_parameters":-1}]"#,
                "-1",
            ),
            (r#"[{"languages":["id"]}]"#, "name"),
            (
                r#"[{"name":" ","languages":["id"]}]"#,
                "name must not be empty",
            ),
            (
                r#"[{"name":"otp","languages":[]}]"#,
                "at least one language",
            ),
            (
                r#"[{"name":"otp","languages":[""]}]"#,
                "empty language code",
            ),
            (
                r#"[{"name":"otp","languages":["id"]},{"name":"otp","languages":["en_US","id"]}]"#,
                "template 1: otp in id is defined twice",
            ),
        ] {
            let file = TempFile::new(contents);
            let e = Templates::load(Some(&file.0)).expect_err(contents);
            assert!(e.starts_with("KURIR_SANDBOX_TEMPLATES: "), "{e}");
            assert!(e.contains(&file.0.display().to_string()), "{e}");
            assert!(e.contains(says), "{contents}: {e}");
        }
    }
}
