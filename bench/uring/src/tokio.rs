//! One worker on tokio's current-thread runtime (epoll), as a Gantry worker runs.
mod common;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() {
    let (listen, upstream) = common::args();
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(&listen).await.unwrap();
        loop {
            let (mut down, _) = l.accept().await.unwrap();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let _ = down.set_nodelay(true);
                let mut up = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                let _ = up.set_nodelay(true);
                let (mut req, mut res) = (Vec::with_capacity(8192), Vec::with_capacity(8192));
                loop {
                    req.clear();
                    let n = loop {
                        if let Some(n) = common::request_end(&req) {
                            break n;
                        }
                        if down.read_buf(&mut req).await.unwrap_or(0) == 0 {
                            return;
                        }
                    };
                    up.write_all(&req[..n]).await.unwrap();
                    res.clear();
                    let m = loop {
                        if let Some(m) = common::response_end(&res) {
                            break m;
                        }
                        if up.read_buf(&mut res).await.unwrap() == 0 {
                            return;
                        }
                    };
                    if down.write_all(&res[..m]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}
