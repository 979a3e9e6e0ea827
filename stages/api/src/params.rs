//! Typed stage parameters: a kind declares [`ParamSpec`]s, the engine checks a
//! recipe's `with:` against them before anything runs, and the stage reads the
//! checked values through [`Params`].

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::StageError;

/// The type of one parameter. Values are checked against it at validation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    Str,
    Int,
    Float,
    Bool,
    /// A list of strings (a single string is accepted as a list of one).
    StrList,
    /// A mapping from names to numbers, e.g. language ratios.
    FloatMap,
    /// A mapping from names to strings, e.g. environment variables.
    StrMap,
    /// One of a fixed set of strings.
    Choice(&'static [&'static str]),
    /// Anything; the stage checks it itself.
    Any,
}

impl ParamType {
    pub fn describe(&self) -> String {
        match self {
            ParamType::Str => "a string".into(),
            ParamType::Int => "an integer".into(),
            ParamType::Float => "a number".into(),
            ParamType::Bool => "true or false".into(),
            ParamType::StrList => "a list of strings".into(),
            ParamType::FloatMap => "a mapping of names to numbers".into(),
            ParamType::StrMap => "a mapping of names to strings".into(),
            ParamType::Choice(options) => format!("one of {}", options.join(", ")),
            ParamType::Any => "any value".into(),
        }
    }

    /// Checks a value, coercing where YAML is ambiguous (an integer where a
    /// float is expected, a lone string where a list is expected).
    pub fn coerce(&self, value: &Value) -> Result<Value, String> {
        let wrong = || Err(format!("expected {}, found {}", self.describe(), describe_value(value)));
        match (self, value) {
            (ParamType::Any, v) => Ok(v.clone()),
            (ParamType::Str, Value::String(_)) => Ok(value.clone()),
            (ParamType::Int, Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(value.clone()),
            (ParamType::Float, Value::Number(_)) => Ok(value.clone()),
            (ParamType::Bool, Value::Bool(_)) => Ok(value.clone()),
            (ParamType::StrList, Value::String(s)) => Ok(Value::Array(vec![Value::String(s.clone())])),
            (ParamType::StrList, Value::Array(items)) => {
                if items.iter().all(Value::is_string) {
                    Ok(value.clone())
                } else {
                    wrong()
                }
            }
            (ParamType::FloatMap, Value::Object(m)) => {
                if m.values().all(Value::is_number) {
                    Ok(value.clone())
                } else {
                    wrong()
                }
            }
            (ParamType::StrMap, Value::Object(m)) => {
                if m.values().all(Value::is_string) {
                    Ok(value.clone())
                } else {
                    wrong()
                }
            }
            (ParamType::Choice(options), Value::String(s)) => {
                if options.contains(&s.as_str()) {
                    Ok(value.clone())
                } else {
                    Err(format!("`{s}` is not {}", self.describe()))
                }
            }
            _ => wrong(),
        }
    }
}

fn describe_value(value: &Value) -> String {
    match value {
        Value::Null => "nothing (null)".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// The numbers a numeric parameter may take; checked at validation, so a
/// negative learning rate is refused before anything runs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Range {
    pub min: Option<f64>,
    /// `min` itself is not allowed (a learning rate must be above 0).
    pub min_exclusive: bool,
    pub max: Option<f64>,
    pub max_exclusive: bool,
}

impl Range {
    /// Why `value` is outside, if it is.
    pub fn check(&self, value: f64) -> Result<(), String> {
        let low = match self.min {
            Some(m) if self.min_exclusive && value <= m => true,
            Some(m) => value < m,
            None => false,
        };
        let high = match self.max {
            Some(m) if self.max_exclusive && value >= m => true,
            Some(m) => value > m,
            None => false,
        };
        if low || high || value.is_nan() {
            Err(format!("must be {}, found {value}", self.describe()))
        } else {
            Ok(())
        }
    }

    /// "above 0", "at least 0", "from 0 to 1", "at least 0 and below 1".
    pub fn describe(&self) -> String {
        match (self.min, self.max) {
            (Some(a), None) if self.min_exclusive => format!("above {a}"),
            (Some(a), None) => format!("at least {a}"),
            (None, Some(b)) if self.max_exclusive => format!("below {b}"),
            (None, Some(b)) => format!("at most {b}"),
            (Some(a), Some(b)) if !self.min_exclusive && !self.max_exclusive => format!("from {a} to {b}"),
            (Some(a), Some(b)) => format!(
                "{} {a} and {} {b}",
                if self.min_exclusive { "above" } else { "at least" },
                if self.max_exclusive { "below" } else { "at most" }
            ),
            (None, None) => "any number".into(),
        }
    }

    pub fn is_unbounded(&self) -> bool {
        self.min.is_none() && self.max.is_none()
    }
}

/// Declaration of one parameter of a stage kind.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamType,
    /// Default as JSON text; `None` with `required: false` means "absent".
    pub default: Option<&'static str>,
    pub required: bool,
    pub doc: &'static str,
    /// For numbers: what values are allowed.
    pub range: Range,
}

impl ParamSpec {
    /// Above 0 (learning rates, sizes, counts).
    pub const fn positive(mut self) -> Self {
        self.range.min = Some(0.0);
        self.range.min_exclusive = true;
        self
    }

    /// 0 or more (weight decay, warmup steps, "0: off" settings).
    pub const fn non_negative(mut self) -> Self {
        self.range.min = Some(0.0);
        self.range.min_exclusive = false;
        self
    }

    /// From `min` to `max`, both included (thresholds, fractions).
    pub const fn between(mut self, min: f64, max: f64) -> Self {
        self.range = Range {
            min: Some(min),
            min_exclusive: false,
            max: Some(max),
            max_exclusive: false,
        };
        self
    }

    /// At least `min` and below `max` (Adam's betas).
    pub const fn from_below(mut self, min: f64, max: f64) -> Self {
        self.range = Range {
            min: Some(min),
            min_exclusive: false,
            max: Some(max),
            max_exclusive: true,
        };
        self
    }

    /// Type, then range: why `value` is not acceptable, or the value as the
    /// stage will read it.
    pub fn check(&self, value: &Value) -> Result<Value, String> {
        let value = self.ty.coerce(value)?;
        if let Some(n) = value.as_f64() {
            self.range.check(n)?;
        }
        Ok(value)
    }

    pub const fn required(name: &'static str, ty: ParamType, doc: &'static str) -> Self {
        ParamSpec {
            name,
            ty,
            default: None,
            required: true,
            doc,
            range: Range {
                min: None,
                min_exclusive: false,
                max: None,
                max_exclusive: false,
            },
        }
    }
    pub const fn optional(name: &'static str, ty: ParamType, doc: &'static str) -> Self {
        ParamSpec {
            name,
            ty,
            default: None,
            required: false,
            doc,
            range: Range {
                min: None,
                min_exclusive: false,
                max: None,
                max_exclusive: false,
            },
        }
    }
    pub const fn with_default(name: &'static str, ty: ParamType, default: &'static str, doc: &'static str) -> Self {
        ParamSpec {
            name,
            ty,
            default: Some(default),
            required: false,
            doc,
            range: Range {
                min: None,
                min_exclusive: false,
                max: None,
                max_exclusive: false,
            },
        }
    }
}

/// Checked parameters of one instance, defaults filled in. Keys are sorted
/// (serde_json's map is ordered), which makes the JSON text canonical.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    values: Map<String, Value>,
}

impl Params {
    pub fn new(values: Map<String, Value>) -> Self {
        Params { values }
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.values
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name).filter(|v| !v.is_null())
    }

    fn missing(name: &str) -> StageError {
        StageError::Param {
            name: name.to_string(),
            message: "is required but not set".into(),
        }
    }

    fn mistyped(name: &str, expected: &str) -> StageError {
        StageError::Param {
            name: name.to_string(),
            message: format!("expected {expected}"),
        }
    }

    pub fn str(&self, name: &str) -> Result<&str, StageError> {
        self.opt_str(name)?.ok_or_else(|| Self::missing(name))
    }

    pub fn opt_str(&self, name: &str) -> Result<Option<&str>, StageError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Self::mistyped(name, "a string")),
        }
    }

    pub fn i64(&self, name: &str) -> Result<i64, StageError> {
        self.opt_i64(name)?.ok_or_else(|| Self::missing(name))
    }

    pub fn opt_i64(&self, name: &str) -> Result<Option<i64>, StageError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| Self::mistyped(name, "an integer")),
        }
    }

    pub fn usize(&self, name: &str) -> Result<usize, StageError> {
        let v = self.i64(name)?;
        usize::try_from(v).map_err(|_| Self::mistyped(name, "a non-negative integer"))
    }

    pub fn opt_usize(&self, name: &str) -> Result<Option<usize>, StageError> {
        match self.opt_i64(name)? {
            None => Ok(None),
            Some(v) => usize::try_from(v)
                .map(Some)
                .map_err(|_| Self::mistyped(name, "a non-negative integer")),
        }
    }

    pub fn f64(&self, name: &str) -> Result<f64, StageError> {
        self.opt_f64(name)?.ok_or_else(|| Self::missing(name))
    }

    pub fn opt_f64(&self, name: &str) -> Result<Option<f64>, StageError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| Self::mistyped(name, "a number")),
        }
    }

    pub fn bool(&self, name: &str) -> Result<bool, StageError> {
        match self.get(name) {
            None => Err(Self::missing(name)),
            Some(v) => v.as_bool().ok_or_else(|| Self::mistyped(name, "true or false")),
        }
    }

    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, StageError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| Self::mistyped(name, "true or false")),
        }
    }

    pub fn str_list(&self, name: &str) -> Result<Vec<String>, StageError> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| Self::mistyped(name, "a list of strings"))
                })
                .collect(),
            Some(_) => Err(Self::mistyped(name, "a list of strings")),
        }
    }

    pub fn float_map(&self, name: &str) -> Result<Vec<(String, f64)>, StageError> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    v.as_f64()
                        .map(|f| (k.clone(), f))
                        .ok_or_else(|| Self::mistyped(name, "a mapping of names to numbers"))
                })
                .collect(),
            Some(_) => Err(Self::mistyped(name, "a mapping of names to numbers")),
        }
    }

    pub fn str_map(&self, name: &str) -> Result<Vec<(String, String)>, StageError> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    v.as_str()
                        .map(|s| (k.clone(), s.to_string()))
                        .ok_or_else(|| Self::mistyped(name, "a mapping of names to strings"))
                })
                .collect(),
            Some(_) => Err(Self::mistyped(name, "a mapping of names to strings")),
        }
    }

    /// Deserializes one parameter into a stage's own type.
    pub fn decode<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StageError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| StageError::Param {
                    name: name.to_string(),
                    message: e.to_string(),
                }),
        }
    }

    /// Canonical JSON text: sorted keys, no whitespace. Fingerprints hash this.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(&self.values).unwrap_or_default()
    }
}
