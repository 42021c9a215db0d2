//! `multipart/form-data` bodies (RFC 7578), read as Kong's `lua-multipart` reads them: the
//! parts in order, each with its `Content-Disposition` name and kept whole as it came (its
//! headers and content), so that a body can be written back with parts changed.

/// One part: its field name, and the part as it came (headers, blank line, content).
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: Option<String>,
    pub raw: Vec<u8>,
}

impl Part {
    /// A simple field, as written back.
    pub fn simple(name: &str, value: &str) -> Part {
        Part {
            name: Some(name.to_string()),
            raw: format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}")
                .into_bytes(),
        }
    }

    /// The part's content (after its headers).
    pub fn content(&self) -> &[u8] {
        let start = find(&self.raw, b"\r\n\r\n", 0).map_or(self.raw.len(), |s| s + 4);
        &self.raw[start..]
    }
}

/// The `boundary` parameter of a content type, as given (it is case-sensitive).
pub fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

fn name_of(head: &[u8]) -> Option<String> {
    let head = String::from_utf8_lossy(head);
    head.lines()
        .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
        .and_then(|l| {
            l.split(';').find_map(|p| {
                let (k, v) = p.trim().split_once('=')?;
                (k.trim() == "name").then(|| v.trim().trim_matches('"').to_string())
            })
        })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The parts of a body with boundary `b`; `None` when it is not such a body.
pub fn parse(body: &[u8], b: &str) -> Option<Vec<Part>> {
    let delim = format!("--{b}");
    let d = delim.as_bytes();
    let mut at = find(body, d, 0)? + d.len();
    let mut parts = Vec::new();
    loop {
        if body.get(at..at + 2) == Some(b"--") {
            return Some(parts);
        }
        // The CRLF after the delimiter.
        at += 2;
        let next = find(body, format!("\r\n{delim}").as_bytes(), at)?;
        let raw = body[at..next].to_vec();
        let head_end = find(&raw, b"\r\n\r\n", 0).unwrap_or(raw.len());
        parts.push(Part {
            name: name_of(&raw[..head_end]),
            raw,
        });
        at = next + 2 + d.len();
    }
}

/// A body of `parts` with boundary `b`.
pub fn render(parts: &[Part], b: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(format!("--{b}\r\n").as_bytes());
        out.extend_from_slice(&p.raw);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{b}--\r\n").as_bytes());
    out
}

/// The named fields of a body, in order, with their contents as text.
pub fn fields(body: &[u8], b: &str) -> Option<Vec<(String, String)>> {
    Some(
        parse(body, b)?
            .iter()
            .filter_map(|p| {
                Some((
                    p.name.clone()?,
                    String::from_utf8_lossy(p.content()).into_owned(),
                ))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_read_and_written_back() {
        let body = b"--XY\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--XY\r\nContent-Disposition: form-data; name=\"f\"; filename=\"k.yml\"\r\nContent-Type: text/yaml\r\n\r\nx: [1]\r\n--XY--\r\n";
        assert_eq!(
            boundary("multipart/form-data; boundary=XY").as_deref(),
            Some("XY")
        );
        let f = fields(body, "XY").unwrap();
        assert_eq!(
            f,
            [
                ("a".to_string(), "1".to_string()),
                ("f".to_string(), "x: [1]".to_string())
            ]
        );
        let parts = parse(body, "XY").unwrap();
        assert_eq!(render(&parts, "XY"), body.to_vec());
        assert!(parse(b"not multipart", "XY").is_none());
    }
}
