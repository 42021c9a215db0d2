//! One worker on monoio's io_uring driver: the same exchange as `tokio.rs`, with owned buffers
//! (io_uring completes reads into memory the kernel holds until then).
mod common;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};

fn main() {
    let (listen, upstream) = common::args();
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(1024)
        .build()
        .expect("io_uring runtime");
    rt.block_on(async move {
        let l = monoio::net::TcpListener::bind(listen.as_str()).unwrap();
        loop {
            let (mut down, _) = l.accept().await.unwrap();
            let upstream = upstream.clone();
            monoio::spawn(async move {
                let _ = down.set_nodelay(true);
                let mut up = monoio::net::TcpStream::connect(upstream.as_str()).await.unwrap();
                let _ = up.set_nodelay(true);
                let mut req: Vec<u8> = Vec::with_capacity(8192);
                let mut res: Vec<u8> = Vec::with_capacity(8192);
                let mut chunk: Vec<u8> = Vec::with_capacity(8192);
                loop {
                    req.clear();
                    let n = loop {
                        if let Some(n) = common::request_end(&req) {
                            break n;
                        }
                        chunk.clear();
                        let (r, c) = down.read(chunk).await;
                        chunk = c;
                        match r {
                            Ok(0) | Err(_) => return,
                            Ok(_) if req.is_empty() => std::mem::swap(&mut req, &mut chunk),
                            Ok(_) => req.extend_from_slice(&chunk),
                        }
                    };
                    req.truncate(n);
                    let (r, b) = up.write_all(req).await;
                    req = b;
                    r.unwrap();
                    res.clear();
                    let m = loop {
                        if let Some(m) = common::response_end(&res) {
                            break m;
                        }
                        chunk.clear();
                        let (r, c) = up.read(chunk).await;
                        chunk = c;
                        match r {
                            Ok(0) | Err(_) => return,
                            Ok(_) if res.is_empty() => std::mem::swap(&mut res, &mut chunk),
                            Ok(_) => res.extend_from_slice(&chunk),
                        }
                    };
                    res.truncate(m);
                    let (r, b) = down.write_all(res).await;
                    res = b;
                    if r.is_err() {
                        return;
                    }
                }
            });
        }
    });
}
