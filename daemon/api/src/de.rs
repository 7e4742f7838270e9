//! Deserializers for query-string fields, where every value arrives as a string and a list may
//! arrive as one value. Use them with `#[serde(deserialize_with = "...")]`.

use std::fmt::Display;
use std::str::FromStr;

use serde::Deserialize;
use serde::de::{self, Deserializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText<T> {
    Num(T),
    Text(String),
}

/// An optional number given as a JSON number or as its decimal text (`limit=20`).
pub fn opt_number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + Deserialize<'de>,
    T::Err: Display,
{
    match Option::<NumOrText<T>>::deserialize(d)? {
        None => Ok(None),
        Some(NumOrText::Num(n)) => Ok(Some(n)),
        Some(NumOrText::Text(s)) => s
            .parse()
            .map(Some)
            .map_err(|e| de::Error::custom(format!("{s:?} is not a number: {e}"))),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A list of strings given as a list or as one value (`type=a` or `type=a&type=b`).
pub fn one_or_many<'de, D>(d: D) -> Result<Vec<String>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    })
}
