//! JSON that keeps every key of every object, duplicates included. serde_json's `Value` (and
//! serde-derived structs with `flatten`, as the safetensors crate uses for its header) keep
//! the last of two equal keys without a word, so a file that says two different things
//! would be read as one of them. Parsing into [`Json`] first lets the reader refuse it,
//! naming the key.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// A parsed JSON document; objects keep their entries in order, repeated keys included.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

/// A key found twice in one object, with where that object sits (`""` for the top level,
/// else a path such as `[1]` or `.shape`).
#[derive(Debug, PartialEq)]
pub(crate) struct Duplicate {
    pub path: String,
    pub key: String,
}

impl Json {
    /// The first key that repeats within one object, searching depth first.
    pub fn duplicate(&self) -> Option<Duplicate> {
        self.duplicate_at(&mut String::new())
    }

    fn duplicate_at(&self, path: &mut String) -> Option<Duplicate> {
        let at = path.len();
        let found = match self {
            Json::Array(items) => items.iter().enumerate().find_map(|(i, v)| {
                path.truncate(at);
                path.push_str(&format!("[{i}]"));
                v.duplicate_at(path)
            }),
            Json::Object(entries) => repeated_key(entries)
                .map(|key| Duplicate {
                    path: path.clone(),
                    key: key.to_string(),
                })
                .or_else(|| {
                    entries.iter().find_map(|(k, v)| {
                        path.truncate(at);
                        path.push_str(&format!(".{k}"));
                        v.duplicate_at(path)
                    })
                }),
            _ => None,
        };
        path.truncate(at);
        found
    }

    /// The same document as serde_json's `Value`. Call it only after [`Json::duplicate`]
    /// found nothing: a repeated key would keep its last value.
    pub fn into_value(self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(b),
            Json::Number(n) => Value::Number(n),
            Json::String(s) => Value::String(s),
            Json::Array(a) => Value::Array(a.into_iter().map(Json::into_value).collect()),
            Json::Object(o) => {
                Value::Object(o.into_iter().map(|(k, v)| (k, v.into_value())).collect())
            }
        }
    }

    /// A short name of the value's kind, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }

    /// The value as a non-negative integer that fits a `usize`.
    pub fn as_usize(&self) -> Option<usize> {
        match self {
            Json::Number(n) => n.as_u64().and_then(|v| usize::try_from(v).ok()),
            _ => None,
        }
    }
}

/// The first key of `entries` that an earlier entry already used.
pub(crate) fn repeated_key(entries: &[(String, Json)]) -> Option<&str> {
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    entries
        .iter()
        .find(|(k, _)| !seen.insert(k.as_str()))
        .map(|(k, _)| k.as_str())
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
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
    fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
        Ok(Json::Bool(b))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        // serde_json never hands out a non-finite f64; Null would be its own encoding.
        Ok(serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number))
    }
    fn visit_str<E>(self, s: &str) -> Result<Json, E> {
        Ok(Json::String(s.to_string()))
    }
    fn visit_string<E>(self, s: String) -> Result<Json, E> {
        Ok(Json::String(s))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<String>()? {
            entries.push((k, map.next_value()?));
        }
        Ok(Json::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Json {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn repeated_keys_are_found_with_their_place() {
        assert_eq!(parse(r#"{"a":1,"b":[{"c":1}]}"#).duplicate(), None);
        let d = parse(r#"{"a":1,"b":[{"c":1},{"c":2,"c":3}]}"#).duplicate();
        assert_eq!(
            d,
            Some(Duplicate {
                path: ".b[1]".into(),
                key: "c".into()
            })
        );
        let d = parse(r#"{"a":1,"a":2}"#).duplicate().unwrap();
        assert_eq!((d.path.as_str(), d.key.as_str()), ("", "a"));
    }

    #[test]
    fn the_value_is_serde_json_s() {
        let s = r#"{"x":[1,-2,3.5,"s",null,true],"y":{}}"#;
        assert_eq!(
            parse(s).into_value(),
            serde_json::from_str::<serde_json::Value>(s).unwrap()
        );
    }
}
