//! A static file server for the lab: what a PXE deployment's HTTP server does (serves the image
//! folder and the cluster configuration). Slirp guests reach it as 10.0.2.2:<port>.

use std::path::{Path, PathBuf};

pub struct HttpDir {
    pub port: u16,
    server: std::sync::Arc<tiny_http::Server>,
}

impl HttpDir {
    /// Serves the files of `root` (no listing, no subfolders above it) on a free port.
    pub fn serve(root: &Path) -> HttpDir {
        let server = std::sync::Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind"));
        let port = server.server_addr().to_ip().expect("tcp").port();
        let root: PathBuf = root.to_path_buf();
        let s = server.clone();
        std::thread::spawn(move || {
            for req in s.incoming_requests() {
                let name = req.url().trim_start_matches('/').split('?').next().unwrap_or("").to_string();
                let path = root.join(&name);
                let ok = !name.is_empty() && !name.contains("..") && path.is_file();
                let _ = match ok.then(|| std::fs::File::open(&path).ok()).flatten() {
                    Some(f) => req.respond(tiny_http::Response::from_file(f)),
                    None => req.respond(tiny_http::Response::from_string("not found").with_status_code(404)),
                };
            }
        });
        HttpDir { port, server }
    }
}

impl Drop for HttpDir {
    fn drop(&mut self) {
        self.server.unblock();
    }
}
