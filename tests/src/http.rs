//! A static file server for the lab: what a PXE deployment's HTTP server does (serves the image
//! folder and the cluster configuration). Slirp guests reach it as 10.0.2.2:<port>.

use std::path::{Path, PathBuf};

pub struct HttpDir {
    pub port: u16,
    server: std::sync::Arc<tiny_http::Server>,
    /// Every request answered: the file's name and the status code.
    pub served: std::sync::Arc<std::sync::Mutex<Vec<(String, u16)>>>,
}

/// A file's version as a web server names it (size and modification time).
fn etag(meta: &std::fs::Metadata) -> String {
    let mtime = meta.modified().ok().and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
    format!("\"{}-{}\"", meta.len(), mtime.as_nanos())
}

impl HttpDir {
    /// Serves the files of `root` (no listing, no subfolders above it) on a free port.
    pub fn serve(root: &Path) -> HttpDir {
        let server = std::sync::Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind"));
        let port = server.server_addr().to_ip().expect("tcp").port();
        let root: PathBuf = root.to_path_buf();
        let s = server.clone();
        let served: std::sync::Arc<std::sync::Mutex<Vec<(String, u16)>>> = Default::default();
        let log = served.clone();
        std::thread::spawn(move || {
            for req in s.incoming_requests() {
                let name = req.url().trim_start_matches('/').split('?').next().unwrap_or("").to_string();
                let path = root.join(&name);
                let ok = !name.is_empty() && !name.contains("..") && path.is_file();
                let file = ok.then(|| std::fs::File::open(&path).ok()).flatten();
                let tag = file.as_ref().and_then(|f| f.metadata().ok()).map(|m| etag(&m));
                let asked = req.headers().iter().find(|h| h.field.equiv("If-None-Match")).map(|h| h.value.to_string());
                let header = |v: &str| tiny_http::Header::from_bytes(&b"ETag"[..], v.as_bytes()).expect("header");
                let code = match (file, tag) {
                    (Some(_), Some(t)) if asked.as_deref() == Some(t.as_str()) => {
                        let _ = req.respond(tiny_http::Response::empty(304).with_header(header(&t)));
                        304
                    }
                    (Some(f), Some(t)) => {
                        let _ = req.respond(tiny_http::Response::from_file(f).with_header(header(&t)));
                        200
                    }
                    (Some(f), None) => {
                        let _ = req.respond(tiny_http::Response::from_file(f));
                        200
                    }
                    (None, _) => {
                        let _ = req.respond(tiny_http::Response::from_string("not found").with_status_code(404));
                        404
                    }
                };
                log.lock().unwrap_or_else(|p| p.into_inner()).push((name, code));
            }
        });
        HttpDir { port, server, served }
    }
}

impl Drop for HttpDir {
    fn drop(&mut self) {
        self.server.unblock();
    }
}
