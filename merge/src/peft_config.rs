//! PEFT `adapter_config.json` (algorithms.md §10.1).
//!
//! Only the fields that matter for validating and applying a LoRA adapter are kept; every other
//! key is tolerated and ignored. A JSON `null` is treated like an absent key (the field gets its
//! default). `rank_pattern` and `alpha_pattern` keep the key order of the file, because PEFT
//! resolves them first-match-wins in dict order.

use std::fmt;

use regex::{Regex, RegexBuilder};
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::error::FormatError;

/// Compiled-size cap for pattern regexes (guards against pathological patterns).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The `target_modules` field.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum TargetModules {
    /// Absent or null.
    #[default]
    Unspecified,
    /// A list of names; a module matches if its path equals an entry or ends with `.entry`.
    List(Vec<String>),
    /// The special string `"all-linear"`.
    AllLinear,
    /// Any other string: a full-match regex on the module path (kept as text, not compiled,
    /// since it may use Python-only regex syntax and is not needed for validation).
    Regex(String),
}

/// A parsed PEFT LoRA `adapter_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    /// Always `"LORA"` for a parsed config.
    pub peft_type: String,
    /// `task_type`, e.g. `"CAUSAL_LM"`.
    pub task_type: Option<String>,
    /// Identity of the base model.
    pub base_model_name_or_path: Option<String>,
    /// Base model revision.
    pub revision: Option<String>,
    /// Default rank (default 8, always ≥ 1).
    pub r: u64,
    /// Default alpha (default 8, finite and ≥ 0).
    pub lora_alpha: f64,
    /// Scale by `α/√r` instead of `α/r`.
    pub use_rslora: bool,
    /// DoRA adapter (has `lora_magnitude_vector` tensors).
    pub use_dora: bool,
    /// True for GPT-2 `Conv1D` targets.
    pub fan_in_fan_out: bool,
    /// Which modules were targeted.
    pub target_modules: TargetModules,
    /// Per-module rank overrides, in file order.
    pub rank_pattern: Vec<(String, u64)>,
    /// Per-module alpha overrides, in file order.
    pub alpha_pattern: Vec<(String, f64)>,
    /// Modules trained and saved whole besides the LoRA pairs (vLLM refuses such adapters).
    pub modules_to_save: Vec<String>,
}

impl Default for AdapterConfig {
    /// PEFT's `LoraConfig` defaults: LoRA, `r = 8`, `lora_alpha = 8`, no patterns.
    fn default() -> Self {
        AdapterConfig {
            peft_type: "LORA".to_string(),
            task_type: None,
            base_model_name_or_path: None,
            revision: None,
            r: 8,
            lora_alpha: 8.0,
            use_rslora: false,
            use_dora: false,
            fan_in_fan_out: false,
            modules_to_save: Vec::new(),
            target_modules: TargetModules::Unspecified,
            rank_pattern: Vec::new(),
            alpha_pattern: Vec::new(),
        }
    }
}

fn invalid(msg: impl Into<String>) -> FormatError {
    FormatError::InvalidAdapterConfig(msg.into())
}

impl AdapterConfig {
    /// Parses `adapter_config.json` bytes.
    ///
    /// Errors: not JSON or not an object, a duplicated key, a known field with the wrong type,
    /// `r` or a `rank_pattern` value that is not a positive integer, a `lora_alpha` or
    /// `alpha_pattern` value that is negative or not finite, a pattern key that is not a valid
    /// regex ([`FormatError::InvalidAdapterConfig`]); `peft_type` other than `"LORA"`
    /// ([`FormatError::UnsupportedPeftType`]).
    pub fn from_json(bytes: &[u8]) -> Result<AdapterConfig, FormatError> {
        let value: Json = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("the file is not valid JSON: {e}.")))?;
        let Json::Object(fields) = value else {
            return Err(invalid(format!(
                "the file must contain a JSON object, found {}.",
                value.describe()
            )));
        };
        check_unique(&fields, "adapter_config.json")?;
        let get = |name: &str| -> Option<&Json> {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v)
                .filter(|v| !matches!(v, Json::Null))
        };

        let peft_type = match get("peft_type") {
            None => {
                return Err(invalid(
                    "the required field `peft_type` is missing; a LoRA adapter has \
                     \"peft_type\": \"LORA\".",
                ));
            }
            Some(Json::Str(s)) => s.clone(),
            Some(other) => {
                return Err(invalid(format!(
                    "the field `peft_type` must be a string, found {}.",
                    other.describe()
                )));
            }
        };
        if peft_type != "LORA" {
            return Err(FormatError::UnsupportedPeftType { peft_type });
        }

        let defaults = AdapterConfig::default();
        let r = match get("r") {
            Some(v) => positive_int("r", v)?,
            None => defaults.r,
        };
        let lora_alpha = match get("lora_alpha") {
            Some(v) => alpha_value("lora_alpha", v)?,
            None => defaults.lora_alpha,
        };
        let target_modules = match get("target_modules") {
            None => TargetModules::Unspecified,
            Some(Json::Str(s)) if s == "all-linear" => TargetModules::AllLinear,
            Some(Json::Str(s)) => TargetModules::Regex(s.clone()),
            Some(Json::Array(items)) => {
                let mut names = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Json::Str(s) => names.push(s.clone()),
                        other => {
                            return Err(invalid(format!(
                                "the field `target_modules` must be a list of strings or a \
                                 string, but the list contains {}.",
                                other.describe()
                            )));
                        }
                    }
                }
                TargetModules::List(names)
            }
            Some(other) => {
                return Err(invalid(format!(
                    "the field `target_modules` must be a list of strings or a string, found {}.",
                    other.describe()
                )));
            }
        };

        let mut rank_pattern = Vec::new();
        for (key, v) in pattern_entries("rank_pattern", get("rank_pattern"))? {
            rank_pattern.push((
                key.clone(),
                positive_int(&format!("rank_pattern[{key:?}]"), v)?,
            ));
        }
        let mut alpha_pattern = Vec::new();
        for (key, v) in pattern_entries("alpha_pattern", get("alpha_pattern"))? {
            alpha_pattern.push((
                key.clone(),
                alpha_value(&format!("alpha_pattern[{key:?}]"), v)?,
            ));
        }

        Ok(AdapterConfig {
            peft_type,
            task_type: opt_string("task_type", get("task_type"))?,
            base_model_name_or_path: opt_string(
                "base_model_name_or_path",
                get("base_model_name_or_path"),
            )?,
            revision: opt_string("revision", get("revision"))?,
            r,
            lora_alpha,
            use_rslora: opt_bool("use_rslora", get("use_rslora"))?,
            use_dora: opt_bool("use_dora", get("use_dora"))?,
            fan_in_fan_out: opt_bool("fan_in_fan_out", get("fan_in_fan_out"))?,
            target_modules,
            rank_pattern,
            alpha_pattern,
            modules_to_save: string_list("modules_to_save", get("modules_to_save"))?,
        })
    }

    /// Rank of the module at `module_path` (path inside the base model, e.g.
    /// `model.layers.0.self_attn.q_proj`): the value of the first `rank_pattern` key that
    /// matches, else `r`.
    ///
    /// A key `k` matches `p` iff the regex `^(.*\.)?(k)$` matches `p` (PEFT's
    /// `get_pattern_key`).
    pub fn rank_for(&self, module_path: &str) -> u64 {
        first_match(&self.rank_pattern, module_path).unwrap_or(self.r)
    }

    /// Alpha of the module at `module_path`: the first matching `alpha_pattern` value, else
    /// `lora_alpha`.
    pub fn alpha_for(&self, module_path: &str) -> f64 {
        first_match(&self.alpha_pattern, module_path).unwrap_or(self.lora_alpha)
    }

    /// LoRA scale of the module: `α/r`, or `α/√r` with rsLoRA, using the per-module rank and
    /// alpha.
    pub fn scale_for(&self, module_path: &str) -> f64 {
        let r = self.rank_for(module_path) as f64;
        let alpha = self.alpha_for(module_path);
        if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }
}

/// True iff PEFT's pattern key `key` selects the module at `path`.
///
/// Plain identifiers are matched without a regex (equal, or ends with `.key`); anything else is
/// compiled as `^(.*\.)?(key)$`. A key that does not compile never matches (parsed configs have
/// only valid keys).
pub fn pattern_matches(key: &str, path: &str) -> bool {
    if key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return path
            .strip_suffix(key)
            .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'));
    }
    compile_pattern(key).is_ok_and(|re| re.is_match(path))
}

fn compile_pattern(key: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(&format!(r"^(.*\.)?({key})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

fn first_match<T: Copy>(patterns: &[(String, T)], path: &str) -> Option<T> {
    patterns
        .iter()
        .find(|(k, _)| pattern_matches(k, path))
        .map(|(_, v)| *v)
}

fn check_unique(fields: &[(String, Json)], what: &str) -> Result<(), FormatError> {
    let mut keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
        return Err(invalid(format!(
            "the key {:?} appears more than once in {what}; keep only one.",
            w[0]
        )));
    }
    Ok(())
}

fn pattern_entries<'a>(
    field: &str,
    value: Option<&'a Json>,
) -> Result<&'a [(String, Json)], FormatError> {
    let entries: &[(String, Json)] = match value {
        None => &[],
        Some(Json::Object(entries)) => entries,
        Some(other) => {
            return Err(invalid(format!(
                "the field `{field}` must be an object mapping module patterns to values, found \
                 {}.",
                other.describe()
            )));
        }
    };
    check_unique(entries, &format!("`{field}`"))?;
    for (key, _) in entries {
        compile_pattern(key).map_err(|e| {
            let text = e.to_string();
            let reason = text.lines().last().unwrap_or_default().trim();
            invalid(format!(
                "the `{field}` key {key:?} is not a valid regular expression ({reason}); PEFT \
                 keys are regexes matched against the end of the module path."
            ))
        })?;
    }
    Ok(entries)
}

fn positive_int(field: &str, v: &Json) -> Result<u64, FormatError> {
    let n = match *v {
        Json::U64(n) => Some(n),
        Json::F64(f) if f.fract() == 0.0 && (1.0..=9_007_199_254_740_992.0).contains(&f) => {
            Some(f as u64)
        }
        _ => None,
    };
    match n {
        Some(n) if n > 0 => Ok(n),
        _ => Err(invalid(format!(
            "the field `{field}` must be a positive integer rank, found {}.",
            v.describe()
        ))),
    }
}

fn alpha_value(field: &str, v: &Json) -> Result<f64, FormatError> {
    let a = match *v {
        Json::U64(n) => Some(n as f64),
        Json::I64(n) => Some(n as f64),
        Json::F64(f) => Some(f),
        _ => None,
    };
    match a {
        Some(a) if a.is_finite() && a >= 0.0 => Ok(a),
        _ => Err(invalid(format!(
            "the field `{field}` must be a finite, non-negative number, found {}.",
            v.describe()
        ))),
    }
}

fn opt_string(field: &str, v: Option<&Json>) -> Result<Option<String>, FormatError> {
    match v {
        None => Ok(None),
        Some(Json::Str(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(format!(
            "the field `{field}` must be a string or null, found {}.",
            other.describe()
        ))),
    }
}

fn string_list(field: &str, v: Option<&Json>) -> Result<Vec<String>, FormatError> {
    let wrong = |what: String| {
        invalid(format!(
            "the field `{field}` must be a list of strings or null, {what}."
        ))
    };
    match v {
        None => Ok(Vec::new()),
        Some(Json::Array(items)) => items
            .iter()
            .map(|item| match item {
                Json::Str(s) => Ok(s.clone()),
                other => Err(wrong(format!("but the list contains {}", other.describe()))),
            })
            .collect(),
        Some(other) => Err(wrong(format!("found {}", other.describe()))),
    }
}

fn opt_bool(field: &str, v: Option<&Json>) -> Result<bool, FormatError> {
    match v {
        None => Ok(false),
        Some(Json::Bool(b)) => Ok(*b),
        Some(other) => Err(invalid(format!(
            "the field `{field}` must be true or false, found {}.",
            other.describe()
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// An order-preserving JSON value (serde_json's `preserve_order` feature is not enabled).

enum Json {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Short description of a value for error messages.
    fn describe(&self) -> String {
        match self {
            Json::Null => "null".to_string(),
            Json::Bool(b) => b.to_string(),
            Json::U64(n) => n.to_string(),
            Json::I64(n) => n.to_string(),
            Json::F64(f) => f.to_string(),
            Json::Str(s) => {
                let short: String = s.chars().take(60).collect();
                if short.len() < s.len() {
                    format!("the string {short:?}…")
                } else {
                    format!("the string {short:?}")
                }
            }
            Json::Array(_) => "an array".to_string(),
            Json::Object(_) => "an object".to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        Json::deserialize(d)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
        Ok(Json::Bool(b))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
        Ok(Json::U64(n))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
        Ok(if n >= 0 {
            Json::U64(n.unsigned_abs())
        } else {
            Json::I64(n)
        })
    }

    fn visit_f64<E>(self, f: f64) -> Result<Json, E> {
        Ok(Json::F64(f))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json, E> {
        Ok(Json::Str(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Json, E> {
        Ok(Json::Str(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Json>()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Json>()? {
            entries.push((k, v));
        }
        Ok(Json::Object(entries))
    }
}
