//! What both proxies share: the HTTP/1.1 framing of a keep-alive exchange (bodiless requests,
//! responses with a Content-Length), so that the two differ only by their runtime's I/O.

/// The length of a whole request head at the start of `buf`, if it is there.
pub fn request_end(buf: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    match httparse::Request::new(&mut headers).parse(buf) {
        Ok(httparse::Status::Complete(n)) => Some(n),
        Ok(httparse::Status::Partial) => None,
        Err(e) => panic!("bad request: {e}"),
    }
}

/// The length of a whole response (head and Content-Length body) at the start of `buf`.
pub fn response_end(buf: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut headers);
    match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let len = res
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                .unwrap_or(0);
            (buf.len() >= n + len).then_some(n + len)
        }
        Ok(httparse::Status::Partial) => None,
        Err(e) => panic!("bad response: {e}"),
    }
}

pub fn args() -> (String, String) {
    let mut a = std::env::args().skip(1);
    (a.next().expect("listen address"), a.next().expect("upstream address"))
}
