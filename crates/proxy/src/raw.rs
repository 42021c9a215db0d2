//! Header lines kept as they were read, where nothing reads a header map: the client's request
//! lines written upstream ([`RawRequest`]) and the upstream's response lines written to the
//! client ([`RawHead`]). No map is made, filled, searched and dropped for them.
//!
//! Lines are kept only when every one is plain, `name: value` with one space and CRLF, so that
//! they are the bytes a map would have written but for the names' case and the order of
//! different names. Wherever a map is read (a plugin, a log, a trusted proxy's headers, a
//! route on headers, hashing), the lines are put into one first, and the request or response
//! goes on exactly as a mapped one.

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};

/// Where a header's name and value lie in a head: (name, name length, value, value length).
pub(crate) type Span = (usize, usize, usize, usize);

/// Walk the header lines of `head` that `spans` locates, checking that each is plain and that
/// they follow one another up to the empty line that ends the head; `each` is given each
/// line's name, value and the line's range (with its CRLF), and may refuse it (`None`).
/// Returns the range of the header lines.
pub(crate) fn walk(
    head: &[u8],
    spans: &[Span],
    mut each: impl FnMut(&[u8], &[u8], usize, usize) -> Option<()>,
) -> Option<(usize, usize)> {
    let end = head.len().checked_sub(2)?;
    let first = spans.first().map_or(end, |s| s.0);
    let mut at = first;
    for &(n, nl, v, vl) in spans {
        let next = v + vl + 2;
        if n != at
            || v != n + nl + 2
            || head.get(n + nl..v) != Some(&b": "[..])
            || head.get(v + vl..next) != Some(&b"\r\n"[..])
        {
            return None;
        }
        each(&head[n..n + nl], &head[v..v + vl], n, next)?;
        at = next;
    }
    (at == end && &head[end..] == b"\r\n").then_some((first, end))
}

/// Append the plain lines of `head[from..to]` (as [`walk`] checked them) to `headers`.
pub(crate) fn map_lines(head: &Bytes, from: usize, to: usize, headers: &mut HeaderMap) {
    let mut at = from;
    while at < to {
        let line = &head[at..to];
        let (Some(colon), Some(eol)) = (
            line.iter().position(|b| *b == b':'),
            line.iter().position(|b| *b == b'\r'),
        ) else {
            break;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_maybe_shared(head.slice(at + colon + 2..at + eol)),
        ) {
            headers.append(name, value);
        }
        at += eol + 2;
    }
}

/// What a `Connection` value's tokens say: `close`, `keep-alive`, and whether it names other
/// headers (which then go with it).
#[derive(Default)]
pub(crate) struct Tokens {
    pub close: bool,
    pub keep_alive: bool,
    pub others: bool,
}

pub(crate) fn connection_tokens(value: &[u8]) -> Tokens {
    let mut t = Tokens::default();
    // The usual values, a token alone.
    if value.eq_ignore_ascii_case(b"keep-alive") {
        t.keep_alive = true;
        return t;
    }
    if value.eq_ignore_ascii_case(b"close") {
        t.close = true;
        return t;
    }
    for token in value.split(|b| *b == b',') {
        let token = token.trim_ascii();
        if token.eq_ignore_ascii_case(b"close") {
            t.close = true;
        } else if token.eq_ignore_ascii_case(b"keep-alive") {
            t.keep_alive = true;
        } else if !token.is_empty() {
            t.others = true;
        }
    }
    t
}

/// A client's line that is always left out upstream: this hop's (`Connection` with only
/// `close` or `keep-alive`, `Keep-Alive`, `TE`).
const HOP: u8 = u8::MAX;
/// The most lines a [`RawRequest`] marks; a head with more is mapped.
const MARKS: usize = 8;

/// A client's request header lines as they came, written upstream after the proxy's own
/// headers, leaving out those the proxy sets or removes ([`crate::forward::Added`]). Taken for
/// plain heads with at most one `Host`, no `X-Forwarded-For` or `Via` (which the proxy extends)
/// and no hop-by-hop header but `Connection` (`close`, `keep-alive`), `Keep-Alive` and `TE`.
#[derive(Clone, Debug)]
pub struct RawRequest {
    head: Bytes,
    /// The header lines (a request head is shorter than 64 KiB: its offsets are `u16`).
    from: u16,
    to: u16,
    /// The lines the proxy may leave out, in order: their range and which of the proxy's
    /// headers they are (an index of [`crate::forward::Added`]'s), or `HOP`.
    marks: [(u16, u16, u8); MARKS],
    count: u8,
    /// The `Host` value.
    host: Option<(u16, u16)>,
}

impl RawRequest {
    /// The lines of the request head `head` that `spans` locates, when they can be kept.
    pub(crate) fn of(head: &Bytes, spans: &[Span]) -> Option<RawRequest> {
        u16::try_from(head.len()).ok()?;
        let mut raw = RawRequest {
            head: head.clone(),
            from: 0,
            to: 0,
            marks: [(0, 0, 0); MARKS],
            count: 0,
            host: None,
        };
        let (from, to) = walk(head, spans, |name, value, start, end| {
            let mark = match crate::forward::added_index(name) {
                Some(crate::forward::HOST) => {
                    if raw.host.is_some() {
                        return None;
                    }
                    let v = end - 2 - value.len();
                    raw.host = Some((v as u16, (end - 2) as u16));
                    crate::forward::HOST as u8
                }
                Some(i) if crate::forward::NOT_RAW & (1 << i) != 0 => return None,
                Some(crate::forward::CONNECTION) => {
                    if connection_tokens(value).others {
                        return None;
                    }
                    HOP
                }
                Some(i) => i as u8,
                None => match crate::forward::hop_by_hop(name) {
                    // `Keep-Alive` and `TE` are only left out; others are mapped.
                    true if name.eq_ignore_ascii_case(b"keep-alive")
                        || name.eq_ignore_ascii_case(b"te") =>
                    {
                        HOP
                    }
                    true => return None,
                    false => return Some(()),
                },
            };
            let k = usize::from(raw.count);
            if k == MARKS {
                return None;
            }
            raw.marks[k] = (start as u16, end as u16, mark);
            raw.count += 1;
            Some(())
        })?;
        raw.from = from as u16;
        raw.to = to as u16;
        Some(raw)
    }

    /// The bytes of the whole head (request line, lines and the empty line).
    pub fn head_len(&self) -> usize {
        self.head.len()
    }

    /// The `Host` value.
    pub fn host(&self) -> Option<HeaderValue> {
        let (from, to) = self.host?;
        HeaderValue::from_maybe_shared(self.head.slice(from as usize..to as usize)).ok()
    }

    /// The lines upstream, but this hop's and those whose bit (of the proxy's headers) is in
    /// `skip`.
    pub fn write(&self, out: &mut Vec<u8>, skip: u16) {
        let mut at = self.from as usize;
        for &(from, to, which) in &self.marks[..usize::from(self.count)] {
            out.extend_from_slice(&self.head[at..from as usize]);
            if which != HOP && skip & (1 << which) == 0 {
                out.extend_from_slice(&self.head[from as usize..to as usize]);
            }
            at = to as usize;
        }
        out.extend_from_slice(&self.head[at..self.to as usize]);
    }

    /// Every line into `headers`, as the head would have been mapped.
    pub fn into_map(self, headers: &mut HeaderMap) {
        map_lines(&self.head, self.from as usize, self.to as usize, headers);
    }

    /// The lines but this hop's into `headers`, for an upstream client that writes the map.
    pub fn put_upstream(&self, headers: &mut HeaderMap) {
        let mut at = self.from as usize;
        for &(from, to, which) in &self.marks[..usize::from(self.count)] {
            if which == HOP {
                map_lines(&self.head, at, from as usize, headers);
                at = to as usize;
            }
        }
        map_lines(&self.head, at, self.to as usize, headers);
    }
}

/// The most runs of kept lines a [`RawHead`] has: the lines it leaves out (`Connection`,
/// `Keep-Alive`, `Content-Length`) cut its lines into runs, and a head with more is mapped.
const RUNS: usize = 4;

/// An upstream response's header lines as they came, to be written to the client as they are
/// (in the upstream's case) where nothing reads the response's header map: no header map is
/// made, filled, read and dropped for them. Taken only for plain heads:
/// - every line is `name: value` with one space and CRLF, so that the lines are the bytes
///   the map would have written (but for the names' case and the lines' order);
/// - no `Transfer-Encoding`, `Trailer`, nor any other hop-by-hop header than `Connection`
///   (`close`, `keep-alive`) and `Keep-Alive`, which are left out;
/// - at most one `Content-Length` line, kept apart (the writer frames the body with it);
/// - no `X-Kong-*` header, which the proxy's own might replace.
///
/// Other heads are mapped, as every head is where a plugin or a log reads the map
/// ([`RawHead::into_map`]).
#[derive(Clone, Debug)]
pub struct RawHead {
    head: Bytes,
    /// The ranges of `head` written as they are.
    runs: [(u32, u32); RUNS],
    count: u8,
    /// The `Content-Length` line (with its CRLF) and its value.
    length: Option<(u32, u32, u64)>,
    /// A `Date` line is among them.
    date: bool,
}

/// What a header line is to a [`RawHead`].
enum Line {
    Kept,
    Date,
    /// Left out: this hop's.
    Connection,
    KeepAlive,
    Length,
    /// Not taken raw: the head is mapped.
    Mapped,
}

impl Line {
    fn of(name: &[u8]) -> Line {
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        match name.len() {
            4 if is(b"date") => Line::Date,
            10 if is(b"connection") => Line::Connection,
            10 if is(b"keep-alive") => Line::KeepAlive,
            14 if is(b"content-length") => Line::Length,
            // The other hop-by-hop headers (`Transfer-Encoding`, `Trailer`, `Upgrade`, ...).
            _ if crate::forward::hop_by_hop(name) => Line::Mapped,
            7.. if name[..7].eq_ignore_ascii_case(b"x-kong-") => Line::Mapped,
            _ => Line::Kept,
        }
    }
}

impl RawHead {
    /// The lines of `head` that `spans` locates, when they can be taken raw; what they say of
    /// the framing and this hop goes into `seen`.
    pub(crate) fn of(head: &Bytes, spans: &[Span], seen: &mut crate::h1::Hop) -> Option<RawHead> {
        let mut raw = RawHead {
            head: head.clone(),
            runs: [(0, 0); RUNS],
            count: 0,
            length: None,
            date: false,
        };
        // Where the run of kept lines began.
        let mut run = None;
        let (_, end) = walk(head, spans, |name, value, start, next| {
            let run_start = *run.get_or_insert(start);
            match Line::of(name) {
                Line::Kept => return Some(()),
                Line::Date => {
                    raw.date = true;
                    return Some(());
                }
                Line::Mapped => return None,
                Line::Connection if seen.connection(value) => return None,
                Line::Connection | Line::KeepAlive => {}
                Line::Length => {
                    if raw.length.is_some() {
                        return None;
                    }
                    seen.length(value);
                    // An invalid one is refused where the head is mapped.
                    let len = (*seen.length.as_ref().ok()?)?;
                    raw.length = Some((start as u32, next as u32, len));
                }
            }
            // Left out: the run of kept lines before it ends.
            raw.run(run_start, start)?;
            run = Some(next);
            Some(())
        })?;
        raw.run(run.unwrap_or(end), end)?;
        Some(raw)
    }

    /// A run of kept lines, `from..to` (none when empty); `None` when there are too many.
    fn run(&mut self, from: usize, to: usize) -> Option<()> {
        if to > from {
            let k = usize::from(self.count);
            *self.runs.get_mut(k)? = (from as u32, to as u32);
            self.count += 1;
        }
        Some(())
    }

    /// The kept lines, as they came (without the `Content-Length` line).
    pub fn write(&self, out: &mut Vec<u8>) {
        for &(from, to) in &self.runs[..usize::from(self.count)] {
            out.extend_from_slice(&self.head[from as usize..to as usize]);
        }
    }

    /// The bytes of the kept lines and the `Content-Length` line.
    pub fn size(&self) -> usize {
        let runs = self.runs[..usize::from(self.count)].iter();
        let length = self.length.map_or(0, |(from, to, _)| to - from);
        runs.map(|&(from, to)| to - from).sum::<u32>() as usize + length as usize
    }

    /// The `Content-Length` line (with its CRLF) and its value.
    pub fn length(&self) -> Option<(&[u8], u64)> {
        self.length
            .map(|(from, to, n)| (&self.head[from as usize..to as usize], n))
    }

    /// Whether a `Date` line is among the kept lines.
    pub fn has_date(&self) -> bool {
        self.date
    }

    /// Into a header map (after what it has), as the head would have been mapped.
    pub fn into_map(self, headers: &mut HeaderMap) {
        let runs = self.runs[..usize::from(self.count)].iter().copied();
        let length = self.length.map(|(from, to, _)| (from, to));
        for (from, to) in runs.chain(length) {
            crate::raw::map_lines(&self.head, from as usize, to as usize, headers);
        }
    }
}
