//! A workload's `wasi:http` port: the agent listens on the guest port its policy names
//! and forwards each connection to the runtime's Unix socket, which only the agent can
//! reach. The listener is taken at deploy time, so a port clash refuses the deploy.

use std::path::PathBuf;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, UnixStream};
use tokio::task::JoinHandle;

/// Bind the port (every guest interface) now; forward once `socket` accepts.
pub async fn listen(port: u16, socket: PathBuf) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(("0.0.0.0", port)).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let socket = socket.clone();
            tokio::spawn(async move {
                match UnixStream::connect(&socket).await {
                    Ok(mut unix) => {
                        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                    }
                    Err(_) => {
                        let _ = tcp
                            .write_all(
                                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 24\r\nConnection: close\r\n\r\nworkload is not running\n",
                            )
                            .await;
                    }
                }
            });
        }
    }))
}
