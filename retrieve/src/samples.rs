//! `samples.jsonl`: the routing samples a version may carry, one `{"input": "..."}` per line
//! (other fields, such as a training target, are allowed and ignored). Checked on upload, so a
//! stored file always parses.

use crate::RetrieveError;

/// The file name a version's samples are stored under.
pub const SAMPLES_FILE: &str = "samples.jsonl";
/// Bounds that keep one profile cheap to compute and store. LoraRetriever uses 10–50 samples.
pub const MAX_SAMPLES: usize = 1_000;
pub const MAX_SAMPLES_BYTES: u64 = 4 << 20;
pub const MAX_INPUT_BYTES: usize = 16 << 10;

/// Parses and checks `samples.jsonl`; the error names the line and what is wrong with it.
pub fn parse_samples(bytes: &[u8]) -> Result<Vec<String>, RetrieveError> {
    let bad = |message: String| RetrieveError::Samples(message);
    if bytes.len() as u64 > MAX_SAMPLES_BYTES {
        return Err(bad(format!(
            "{SAMPLES_FILE} is {} bytes; at most {MAX_SAMPLES_BYTES} are accepted",
            bytes.len()
        )));
    }
    let text =
        std::str::from_utf8(bytes).map_err(|e| bad(format!("{SAMPLES_FILE} is not UTF-8: {e}")))?;
    let mut inputs = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| bad(format!("{SAMPLES_FILE} line {line_no}: not JSON: {e}")))?;
        let input = match value.get("input") {
            Some(serde_json::Value::String(s)) => s,
            Some(_) => {
                return Err(bad(format!(
                    "{SAMPLES_FILE} line {line_no}: \"input\" must be a string"
                )));
            }
            None => {
                return Err(bad(format!(
                    "{SAMPLES_FILE} line {line_no}: expected an object with an \"input\" string"
                )));
            }
        };
        if input.trim().is_empty() {
            return Err(bad(format!(
                "{SAMPLES_FILE} line {line_no}: \"input\" is empty"
            )));
        }
        if input.len() > MAX_INPUT_BYTES {
            return Err(bad(format!(
                "{SAMPLES_FILE} line {line_no}: \"input\" is {} bytes; at most {MAX_INPUT_BYTES}",
                input.len()
            )));
        }
        if inputs.len() == MAX_SAMPLES {
            return Err(bad(format!(
                "{SAMPLES_FILE} has more than {MAX_SAMPLES} samples"
            )));
        }
        inputs.push(input.clone());
    }
    if inputs.is_empty() {
        return Err(bad(format!("{SAMPLES_FILE} has no samples")));
    }
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_inputs_and_ignores_other_fields_and_blank_lines() {
        let file = b"{\"input\": \"a\"}\n\n{\"input\": \"b\", \"output\": \"x\"}\n";
        assert_eq!(parse_samples(file).expect("ok"), vec!["a", "b"]);
    }

    #[test]
    fn errors_name_the_line() {
        for (file, needle) in [
            (&b"{\"input\": \"a\"}\nnot json\n"[..], "line 2: not JSON"),
            (b"{\"text\": \"a\"}", "line 1: expected an object"),
            (b"[1]", "line 1: expected an object"),
            (b"{\"input\": 3}", "line 1: \"input\" must be a string"),
            (b"{\"input\": \"  \"}", "line 1: \"input\" is empty"),
            (b"\n\n", "has no samples"),
            (b"\xff\xfe", "not UTF-8"),
        ] {
            let error = parse_samples(file).expect_err("an error").to_string();
            assert!(error.contains(needle), "{error:?} lacks {needle:?}");
        }
    }

    #[test]
    fn bounds_are_enforced() {
        let many = "{\"input\": \"x\"}\n".repeat(MAX_SAMPLES + 1);
        assert!(
            parse_samples(many.as_bytes())
                .expect_err("an error")
                .to_string()
                .contains("more than")
        );
        let long = format!("{{\"input\": \"{}\"}}", "y".repeat(MAX_INPUT_BYTES + 1));
        assert!(
            parse_samples(long.as_bytes())
                .expect_err("an error")
                .to_string()
                .contains("at most")
        );
        let exact = "{\"input\": \"x\"}\n".repeat(MAX_SAMPLES);
        assert_eq!(
            parse_samples(exact.as_bytes()).expect("ok").len(),
            MAX_SAMPLES
        );
    }
}
