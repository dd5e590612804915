//! The agent's payload reader, native: a batch of JSON payloads to one matrix of feature
//! values, each payload's own `event_id` and its `ts`, without a Python object per field.
//!
//! It reads only what it can read exactly as the Python path does (`agent.jsonguard`,
//! `FeatureSpec.extract`): a JSON object within the size and nesting limits whose every
//! feature is a number. Anything else, whatever the reason, is listed for the Python path,
//! which decides (and words) what happens to it. The parsing runs without the GIL.

use std::fmt;

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyTuple};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A JSON scalar as Python's `json` would return it; containers are not kept.
#[derive(Clone, Debug, PartialEq)]
enum Scalar {
    Absent,
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    /// A container, or a number whose Python type or value the visitor cannot tell apart
    /// (see `visit_f64`): left to the Python path.
    Other,
}

impl Scalar {
    /// The value as a float, the way numpy converts a Python int or float; None otherwise.
    fn number(&self) -> Option<f64> {
        match *self {
            Scalar::Int(v) => Some(v as f64),
            Scalar::UInt(v) => Some(v as f64),
            Scalar::Float(v) => Some(v),
            _ => None,
        }
    }

    fn into_py(self, py: Python<'_>) -> PyResult<PyObject> {
        Ok(match self {
            Scalar::Absent | Scalar::Null | Scalar::Other => py.None(),
            Scalar::Bool(v) => v.into_pyobject(py)?.to_owned().into_any().unbind(),
            Scalar::Int(v) => v.into_pyobject(py)?.into_any().unbind(),
            Scalar::UInt(v) => v.into_pyobject(py)?.into_any().unbind(),
            Scalar::Float(v) => v.into_pyobject(py)?.into_any().unbind(),
            Scalar::Str(v) => v.into_pyobject(py)?.into_any().unbind(),
        })
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::UInt(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
        // serde_json reads `-0` and integers beyond 64 bits as floats; Python keeps them as
        // ints (0, and the exact integer). Such values go to the Python path.
        if (v == 0.0 && v.is_sign_negative()) || v.abs() >= 9.223_372_036_854_776e18 {
            return Ok(Scalar::Other);
        }
        Ok(Scalar::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

struct ScalarSeed;

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Scalar;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// What a key of the payload is to the reader.
#[derive(Clone, Copy)]
struct Key {
    feature: Option<usize>,
    event_id: bool,
    ts: bool,
}

impl Key {
    fn wanted(&self) -> bool {
        self.feature.is_some() || self.event_id || self.ts
    }
}

/// Looks keys up among the feature names; payloads usually list them in the same order,
/// so the name after the last match is tried first.
struct KeySeed<'a> {
    names: &'a [String],
    next: &'a mut usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        let names = self.names;
        let guess = *self.next;
        let feature = if guess < names.len() && names[guess] == key {
            Some(guess)
        } else {
            names.iter().position(|name| name == key)
        };
        if let Some(found) = feature {
            *self.next = found + 1;
        }
        Ok(Key {
            feature,
            event_id: key == "event_id",
            ts: key == "ts",
        })
    }
}

/// One payload read: its feature values (in `row`), its `event_id` and `ts` values.
struct PayloadVisitor<'a> {
    names: &'a [String],
    row: &'a mut [f64],
}

struct Read {
    event_id: Scalar,
    ts: Scalar,
}

impl<'de> Visitor<'de> for PayloadVisitor<'_> {
    type Value = Option<Read>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Read>, A::Error> {
        let mut seen = vec![false; self.names.len()];
        let (mut event_id, mut ts) = (Scalar::Absent, Scalar::Absent);
        let mut doubtful = false;
        let mut next = 0;
        while let Some(key) = map.next_key_seed(KeySeed {
            names: self.names,
            next: &mut next,
        })? {
            if !key.wanted() {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            // Later duplicates replace earlier ones, as in Python's json.
            let value = map.next_value_seed(ScalarSeed)?;
            if let Some(j) = key.feature {
                match value.number() {
                    Some(number) => {
                        self.row[j] = number;
                        seen[j] = true;
                    }
                    None => doubtful = true, // the Python path applies the field's policy
                }
            }
            if key.event_id {
                event_id = value.clone();
            }
            if key.ts {
                ts = value;
            }
        }
        if doubtful || ts == Scalar::Other || !seen.iter().all(|&s| s) {
            return Ok(None);
        }
        Ok(Some(Read { event_id, ts }))
    }
}

/// Brackets anywhere in the payload (strings included) bound its nesting from above.
fn within_depth(payload: &[u8], max_depth: usize) -> bool {
    payload.iter().filter(|&&b| b == b'[' || b == b'{').count() <= max_depth
}

fn read_one(
    payload: &[u8],
    names: &[String],
    row: &mut [f64],
    limits: (usize, usize),
) -> Option<Read> {
    let (max_bytes, max_depth) = limits;
    if payload.len() > max_bytes || !within_depth(payload, max_depth) {
        return None;
    }
    // Whole-payload UTF-8 check first: serde_json does not look inside strings it skips.
    let text = std::str::from_utf8(payload).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    let read = de.deserialize_map(PayloadVisitor { names, row }).ok()??;
    de.end().ok()?;
    Some(read)
}

/// Reads payloads into rows of the named features.
#[pyclass(frozen, module = "agent._rows")]
struct RowReader {
    names: Vec<String>,
    max_bytes: usize,
    max_depth: usize,
}

#[pymethods]
impl RowReader {
    #[new]
    fn new(names: Vec<String>, max_bytes: usize, max_depth: usize) -> PyResult<Self> {
        if names.is_empty() {
            return Err(pyo3::exceptions::PyValueError::new_err("no feature names"));
        }
        Ok(RowReader {
            names,
            max_bytes,
            max_depth,
        })
    }

    /// `(values, event_ids, ts, unread)`: the rows as a bytearray of native float64, row by
    /// row (an unread payload's row is junk), each payload's `event_id` when a string and its
    /// `ts` (None where absent or unread), and the indices of the payloads left to Python.
    fn read<'py>(
        &self,
        py: Python<'py>,
        payloads: Vec<Bound<'py, PyBytes>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let width = self.names.len();
        let slices: Vec<&[u8]> = payloads.iter().map(|p| p.as_bytes()).collect();
        let mut values = vec![0.0f64; slices.len() * width];
        let limits = (self.max_bytes, self.max_depth);
        let names = &self.names;
        let reads: Vec<Option<Read>> = py.allow_threads(|| {
            slices
                .iter()
                .zip(values.chunks_mut(width))
                .map(|(payload, row)| read_one(payload, names, row, limits))
                .collect()
        });
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let event_ids = PyList::empty(py);
        let ts = PyList::empty(py);
        let unread = PyList::empty(py);
        for (index, read) in reads.into_iter().enumerate() {
            match read {
                Some(Read {
                    event_id,
                    ts: stamp,
                }) => {
                    let own = match event_id {
                        Scalar::Str(_) => event_id.into_py(py)?,
                        _ => py.None(), // not a string: the Python path ignores it too
                    };
                    event_ids.append(own)?;
                    ts.append(stamp.into_py(py)?)?;
                }
                None => {
                    event_ids.append(py.None())?;
                    ts.append(py.None())?;
                    unread.append(index)?;
                }
            }
        }
        let values = PyByteArray::new(py, &bytes);
        PyTuple::new(
            py,
            [
                values.into_any(),
                event_ids.into_any(),
                ts.into_any(),
                unread.into_any(),
            ],
        )
    }
}

#[pymodule]
fn _rows(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<RowReader>()?;
    Ok(())
}
