//! A small TCP server of the harness on its own thread and runtime (the developer's local
//! service, the test balancer), so that blocking tests can drive it; it stops, with every
//! connection still open, when dropped.

use std::future::Future;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};

/// A running accept loop; dropping it stops the loop and its connections.
pub struct AcceptLoop {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl AcceptLoop {
    /// Accepts on `listener` (bound, any mode), handing each connection to `serve` on a task.
    pub fn start<F, Fut>(listener: std::net::TcpListener, serve: F) -> AcceptLoop
    where
        F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        listener.set_nonblocking(true).expect("nonblocking");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("listener");
                let accept = async {
                    loop {
                        let Ok((stream, peer)) = listener.accept().await else {
                            continue;
                        };
                        tokio::spawn(serve(stream, peer));
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime ends the connections still open.
        });
        AcceptLoop { stop: Some(stop) }
    }
}

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
