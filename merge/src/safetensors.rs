//! safetensors container: header parsing with full validation, and a small writer.
//!
//! Layout (algorithms.md §10.3): bytes `0..8` hold `N`, a little-endian `u64`; bytes `8..8+N`
//! hold a UTF-8 JSON object (optionally padded at the end with spaces); the rest of the file is
//! the data buffer. Each JSON entry is `"name": {"dtype", "shape", "data_offsets"}` with offsets
//! relative to the data buffer; the optional `"__metadata__"` entry maps strings to strings.
//!
//! [`parse_header`] only needs the first `8 + N` bytes and the file length, so uploads can be
//! validated without reading the tensor data.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use serde::de::{DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::FormatError;

/// Largest accepted JSON header, in bytes: 16 MiB. The reference implementation allows 100 MiB,
/// but a LoRA adapter's header is a few hundred bytes per tensor (a 16 MiB header describes
/// ~100,000 tensors), and the service holds a header in memory while it validates an upload: a
/// 100 MiB header ×3 concurrent uploads raised its memory by 900 MiB.
pub const MAX_HEADER_LEN: u64 = 16 * 1024 * 1024;

const METADATA_KEY: &str = "__metadata__";

/// A tensor element type. Serialized as its safetensors name (`"F32"`, `"BF16"`, `"F8_E4M3"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Dtype {
    /// Boolean, one byte.
    #[serde(rename = "BOOL")]
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
    /// 8-bit float, 4 exponent bits, 3 mantissa bits.
    #[serde(rename = "F8_E4M3")]
    F8E4M3,
    /// 8-bit float, 5 exponent bits, 2 mantissa bits.
    #[serde(rename = "F8_E5M2")]
    F8E5M2,
}

impl Dtype {
    /// Every supported dtype.
    pub const ALL: [Dtype; 15] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::I8,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
        Dtype::F8E4M3,
        Dtype::F8E5M2,
    ];

    /// Size of one element in bytes.
    pub fn size_bytes(self) -> u64 {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E4M3 | Dtype::F8E5M2 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }

    /// The safetensors name, e.g. `"BF16"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E5M2 => "F8_E5M2",
        }
    }

    /// Looks a dtype up by its exact safetensors name.
    pub fn from_name(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// True for the floating-point types (including the 8-bit floats).
    pub fn is_float(self) -> bool {
        matches!(
            self,
            Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64 | Dtype::F8E4M3 | Dtype::F8E5M2
        )
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Dtype {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dtype::from_name(s).ok_or_else(|| {
            FormatError::InvalidSafetensors(format!(
                "unknown dtype {s:?}; supported dtypes are {}.",
                known_dtypes()
            ))
        })
    }
}

fn known_dtypes() -> String {
    Dtype::ALL.map(Dtype::as_str).join(", ")
}

/// One tensor entry of a validated header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    /// Tensor name (the JSON key).
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape; empty for a 0-dim (scalar) tensor.
    pub shape: Vec<u64>,
    /// `[begin, end)` byte range relative to the start of the data buffer.
    pub data_offsets: (u64, u64),
}

impl TensorInfo {
    /// Number of elements (1 for a 0-dim tensor). Cannot overflow for a parsed header.
    pub fn n_elements(&self) -> u64 {
        self.shape
            .iter()
            .fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Size of the tensor's data in bytes.
    pub fn byte_len(&self) -> u64 {
        self.data_offsets.1.saturating_sub(self.data_offsets.0)
    }
}

/// A fully validated safetensors header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetensorsHeader {
    /// Tensor entries, sorted by name.
    pub tensors: Vec<TensorInfo>,
    /// The `__metadata__` map (empty when absent).
    pub metadata: BTreeMap<String, String>,
    /// Absolute file offset of the data buffer, `8 + N`.
    pub data_start: u64,
}

impl SafetensorsHeader {
    /// Looks a tensor up by name.
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.tensors.get(i))
    }

    /// Absolute file range `[start, end)` of a tensor's bytes.
    pub fn absolute_range(&self, tensor: &TensorInfo) -> (u64, u64) {
        (
            self.data_start.saturating_add(tensor.data_offsets.0),
            self.data_start.saturating_add(tensor.data_offsets.1),
        )
    }
}

fn invalid(msg: impl Into<String>) -> FormatError {
    FormatError::InvalidSafetensors(msg.into())
}

/// Reads the header length `N` from the first 8 bytes of a file.
///
/// Fails if fewer than 8 bytes are given or if `N` exceeds [`MAX_HEADER_LEN`].
pub fn header_len(first8: &[u8]) -> Result<u64, FormatError> {
    let bytes: [u8; 8] = first8
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            invalid(format!(
                "the file is shorter than the 8-byte header length ({} bytes); upload a complete \
                 .safetensors file.",
                first8.len()
            ))
        })?;
    let n = u64::from_le_bytes(bytes);
    if n > MAX_HEADER_LEN {
        return Err(invalid(format!(
            "the declared header length {n} bytes exceeds the maximum of {MAX_HEADER_LEN} bytes \
             (16 MiB); the file is corrupt, not a safetensors file, or describes far more tensors \
             than a LoRA adapter has."
        )));
    }
    Ok(n)
}

/// Parses and validates a safetensors header.
///
/// `prefix` must hold at least the first `8 + N` bytes of the file (it may hold more, up to the
/// whole file); `file_len` is the length of the whole file. All checks of algorithms.md §10.3 are
/// applied: header length bounds, UTF-8 JSON object (trailing whitespace padding allowed),
/// string-to-string `__metadata__`, known dtypes, no unknown fields in tensor entries, unique
/// names, `end − begin == product(shape) · sizeof(dtype)` with overflow checks, and byte ranges
/// that tile the data buffer exactly (contiguous from 0, no overlap, no gap, ending at EOF).
///
/// Never panics, whatever the input.
pub fn parse_header(prefix: &[u8], file_len: u64) -> Result<SafetensorsHeader, FormatError> {
    let n = header_len(prefix)?;
    if file_len < 8 {
        return Err(invalid(format!(
            "the file is shorter than the 8-byte header length ({file_len} bytes); upload a \
             complete .safetensors file."
        )));
    }
    if prefix.len() as u64 > file_len {
        return Err(invalid(format!(
            "{} bytes were provided but the file is said to be only {file_len} bytes long.",
            prefix.len()
        )));
    }
    let data_len = file_len - 8;
    if n > data_len {
        return Err(invalid(format!(
            "the declared header length {n} bytes goes past the end of the file ({file_len} \
             bytes); the file is truncated or corrupt."
        )));
    }
    let data_len = data_len - n;
    let data_start = 8 + n;
    // n <= file_len - 8 and prefix.len() <= file_len, so this conversion cannot truncate when
    // the prefix is long enough; otherwise report the short prefix.
    let json_bytes = usize::try_from(data_start)
        .ok()
        .and_then(|end| prefix.get(8..end))
        .ok_or_else(|| {
            invalid(format!(
                "only {} bytes of the file were provided but the header needs {data_start}; pass \
                 the whole header.",
                prefix.len()
            ))
        })?;

    let json = std::str::from_utf8(json_bytes).map_err(|e| {
        invalid(format!(
            "the JSON header is not valid UTF-8 (invalid byte at header offset {}).",
            e.valid_up_to()
        ))
    })?;
    if !json.starts_with('{') {
        let found = match json.trim_start().chars().next() {
            None => "an empty header".to_string(),
            Some(c) => format!("a header starting with {c:?}"),
        };
        return Err(invalid(format!(
            "the JSON header must be an object starting with '{{', found {found}."
        )));
    }

    let entries = parse_json_entries(json)?;

    let mut metadata: Option<BTreeMap<String, String>> = None;
    let mut raw_tensors: Vec<(String, RawTensor)> = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        match value {
            RawValue::Metadata(pairs) => {
                if metadata.is_some() {
                    return Err(invalid(format!(
                        "the key {METADATA_KEY:?} appears more than once in the header."
                    )));
                }
                let mut map = BTreeMap::new();
                for (k, v) in pairs {
                    if map.contains_key(&k) {
                        return Err(invalid(format!(
                            "the metadata key {k:?} appears more than once in {METADATA_KEY:?}."
                        )));
                    }
                    map.insert(k, v);
                }
                metadata = Some(map);
            }
            RawValue::Tensor(t) => raw_tensors.push((name, t)),
        }
    }

    let mut tensors = Vec::with_capacity(raw_tensors.len());
    for (name, raw) in raw_tensors {
        tensors.push(validate_entry(name, raw, data_len)?);
    }

    // Unique names.
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = tensors.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(invalid(format!(
            "the tensor name {:?} appears more than once in the header.",
            w[0].name
        )));
    }

    // The byte ranges must tile the data buffer exactly.
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.data_offsets);
    let mut cursor = 0u64;
    let mut previous: Option<&TensorInfo> = None;
    for t in by_offset {
        let (begin, end) = t.data_offsets;
        if begin < cursor {
            let prev = previous.map_or(String::new(), |p| {
                format!(" of tensor {:?} at {}", p.name, offsets_str(p.data_offsets))
            });
            return Err(invalid(format!(
                "tensor {:?} has data_offsets {} which overlap the bytes{prev}; every tensor \
                 needs its own byte range.",
                t.name,
                offsets_str(t.data_offsets)
            )));
        }
        if begin > cursor {
            return Err(invalid(format!(
                "tensor {:?} starts at data offset {begin} but the previous tensor ends at \
                 {cursor}, leaving a gap of {} unused bytes; tensors must be stored back to \
                 back.",
                t.name,
                begin - cursor
            )));
        }
        cursor = end;
        previous = Some(t);
    }
    if cursor != data_len {
        return Err(invalid(format!(
            "the tensors cover {cursor} bytes of data but the file has {data_len} bytes after \
             the header; the data buffer must end exactly at the end of the file."
        )));
    }

    Ok(SafetensorsHeader {
        tensors,
        metadata: metadata.unwrap_or_default(),
        data_start,
    })
}

/// Reads and validates the header of a safetensors file, reading only its first `8 + N` bytes.
///
/// Returns the header and the file's length. I/O failures become [`FormatError::Io`].
pub fn read_header(path: &Path) -> Result<(SafetensorsHeader, u64), FormatError> {
    let io = |e| FormatError::io(path, e);
    let mut file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut prefix = Vec::with_capacity(8);
    (&mut file).take(8).read_to_end(&mut prefix).map_err(io)?;
    let n = header_len(&prefix)?;
    // Only read the header when it fits in the file; otherwise parse_header reports the bad length.
    if n <= file_len.saturating_sub(8) {
        file.take(n).read_to_end(&mut prefix).map_err(io)?;
    }
    let header = parse_header(&prefix, file_len)?;
    Ok((header, file_len))
}

fn offsets_str((b, e): (u64, u64)) -> String {
    format!("[{b}, {e}]")
}

fn shape_str(shape: &[u64]) -> String {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

fn validate_entry(name: String, raw: RawTensor, data_len: u64) -> Result<TensorInfo, FormatError> {
    let dtype = Dtype::from_name(&raw.dtype).ok_or_else(|| {
        invalid(format!(
            "tensor {name:?} has unknown dtype {:?}; supported dtypes are {}.",
            raw.dtype,
            known_dtypes()
        ))
    })?;
    let (begin, end) = (raw.data_offsets[0], raw.data_offsets[1]);
    if begin > end {
        return Err(invalid(format!(
            "tensor {name:?} has data_offsets [{begin}, {end}] whose begin is after its end."
        )));
    }
    let n_bytes = raw
        .shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.size_bytes()))
        .ok_or_else(|| {
            invalid(format!(
                "tensor {name:?} has shape {} whose size in bytes overflows a 64-bit integer.",
                shape_str(&raw.shape)
            ))
        })?;
    if end - begin != n_bytes {
        return Err(invalid(format!(
            "tensor {name:?} has data_offsets [{begin}, {end}] ({} bytes) but shape {} of {dtype} \
             needs {n_bytes} bytes.",
            end - begin,
            shape_str(&raw.shape)
        )));
    }
    if end > data_len {
        return Err(invalid(format!(
            "tensor {name:?} has data_offsets [{begin}, {end}] which go past the end of the \
             {data_len}-byte data buffer; the file is truncated."
        )));
    }
    Ok(TensorInfo {
        name,
        dtype,
        shape: raw.shape,
        data_offsets: (begin, end),
    })
}

// ---------------------------------------------------------------------------------------------
// JSON decoding. serde_json's maps silently drop duplicate keys, so the header object is read
// through a visitor that sees every key in file order.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

enum RawValue {
    Metadata(Vec<(String, String)>),
    Tensor(RawTensor),
}

fn parse_json_entries(json: &str) -> Result<Vec<(String, RawValue)>, FormatError> {
    let mut current: Option<String> = None;
    let mut de = serde_json::Deserializer::from_str(json);
    let parsed = de
        .deserialize_map(HeaderVisitor {
            current: &mut current,
        })
        .and_then(|v| de.end().map(|()| v));
    parsed.map_err(|e| match current {
        Some(key) if !e.is_data() => {
            let entry = if key == METADATA_KEY {
                format!("{key:?}")
            } else {
                format!("the entry for tensor {key:?}")
            };
            invalid(format!("the JSON header is malformed in {entry}: {e}."))
        }
        Some(key) if key == METADATA_KEY => invalid(format!(
            "{METADATA_KEY:?} must map strings to strings: {e}."
        )),
        Some(key) => invalid(format!(
            "the entry for tensor {key:?} must be {{\"dtype\": string, \"shape\": [integers], \
             \"data_offsets\": [begin, end]}} and nothing else: {e}."
        )),
        None => invalid(format!("the JSON header is malformed: {e}.")),
    })
}

/// Visits the top-level header object, recording the key being decoded so errors can name it.
struct HeaderVisitor<'a> {
    current: &'a mut Option<String>,
}

impl<'de> Visitor<'de> for HeaderVisitor<'_> {
    type Value = Vec<(String, RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object mapping tensor names to tensor entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            *self.current = Some(key.clone());
            let value = if key == METADATA_KEY {
                RawValue::Metadata(map.next_value_seed(PairsSeed)?)
            } else {
                RawValue::Tensor(map.next_value::<RawTensor>()?)
            };
            *self.current = None;
            out.push((key, value));
        }
        Ok(out)
    }
}

/// Decodes a string-to-string object into its pairs, keeping duplicates.
struct PairsSeed;

impl<'de> DeserializeSeed<'de> for PairsSeed {
    type Value = Vec<(String, String)>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PairsSeed {
    type Value = Vec<(String, String)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of string values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, String>()? {
            out.push((k, v));
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Writer.

/// Serializes tensors into safetensors bytes.
///
/// Tensors are stored sorted by name (stable for equal names), back to back; `metadata` is
/// written as `__metadata__` unless empty; the JSON header is padded with spaces so the data
/// starts at a multiple of 8. The data slices are written as given: their lengths are not checked
/// against `shape` × dtype, and duplicate names are not rejected, so this can also build invalid
/// files for tests (which [`parse_header`] then rejects).
pub fn write(
    tensors: &[(&str, Dtype, &[u64], &[u8])],
    metadata: &BTreeMap<String, String>,
) -> Vec<u8> {
    let layout: Vec<(&str, Dtype, &[u64], usize)> = tensors
        .iter()
        .map(|&(name, dtype, shape, data)| (name, dtype, shape, data.len()))
        .collect();
    let filled: Result<Vec<u8>, std::convert::Infallible> =
        write_with(&layout, metadata, |i, out| {
            out.copy_from_slice(tensors[i].3);
            Ok(())
        });
    match filled {
        Ok(bytes) => bytes,
        Err(never) => match never {},
    }
}

/// As [`write`], for tensors whose bytes are produced as the file is assembled: `tensors` gives
/// each tensor's name, dtype, shape and byte length, and `fill(i, out)` writes tensor `i`'s
/// bytes into its place in the file. The file is then the only copy of the data in memory.
pub fn write_with<E>(
    tensors: &[(&str, Dtype, &[u64], usize)],
    metadata: &BTreeMap<String, String>,
    mut fill: impl FnMut(usize, &mut [u8]) -> Result<(), E>,
) -> Result<Vec<u8>, E> {
    let (mut out, order) = header_bytes(tensors, metadata);
    let data_len: usize = tensors.iter().map(|t| t.3).sum();
    out.reserve_exact(data_len);
    for &i in &order {
        let at = out.len();
        out.resize(at + tensors[i].3, 0);
        fill(i, &mut out[at..])?;
    }
    Ok(out)
}

/// As [`write_with`], streamed into `w`: each tensor is filled into one reused buffer and written
/// out before the next, so memory holds one tensor's bytes, not the file's. Write errors become
/// `E` through `io`. Returns the bytes written.
pub fn write_to<E>(
    w: &mut impl std::io::Write,
    tensors: &[(&str, Dtype, &[u64], usize)],
    metadata: &BTreeMap<String, String>,
    mut fill: impl FnMut(usize, &mut [u8]) -> Result<(), E>,
    io: impl Fn(std::io::Error) -> E,
) -> Result<u64, E> {
    let (head, order) = header_bytes(tensors, metadata);
    w.write_all(&head).map_err(&io)?;
    let mut written = head.len() as u64;
    let mut buf = Vec::new();
    for &i in &order {
        buf.clear();
        buf.resize(tensors[i].3, 0);
        fill(i, &mut buf)?;
        w.write_all(&buf).map_err(&io)?;
        written += buf.len() as u64;
    }
    Ok(written)
}

/// The 8-byte length and the padded JSON header of a file of `tensors`, and the order in which
/// their data follows it (sorted by name, stable).
fn header_bytes(
    tensors: &[(&str, Dtype, &[u64], usize)],
    metadata: &BTreeMap<String, String>,
) -> (Vec<u8>, Vec<usize>) {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| tensors[a].0.cmp(tensors[b].0));

    let mut json = String::from("{");
    let mut first = true;
    if !metadata.is_empty() {
        json.push_str(&json_string(METADATA_KEY));
        json.push_str(":{");
        for (i, (k, v)) in metadata.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(&json_string(k));
            json.push(':');
            json.push_str(&json_string(v));
        }
        json.push('}');
        first = false;
    }
    let mut offset = 0u64;
    for &i in &order {
        let (name, dtype, shape, len) = tensors[i];
        let end = offset.saturating_add(len as u64);
        if !first {
            json.push(',');
        }
        first = false;
        json.push_str(&json_string(name));
        json.push_str(&format!(
            ":{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{offset},{end}]}}",
            dtype.as_str(),
            shape_str(shape).replace(' ', "")
        ));
        offset = end;
    }
    json.push('}');
    while (json.len() % 8) != 0 {
        json.push(' ');
    }
    let mut head = Vec::with_capacity(8 + json.len());
    head.extend_from_slice(&(json.len() as u64).to_le_bytes());
    head.extend_from_slice(json.as_bytes());
    (head, order)
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}
