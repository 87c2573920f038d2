//! A second handle to a connection's socket, to shut it from outside the task that owns
//! the stream. russh runs a session in a task of its own and, inside key exchange, does
//! not act on a disconnect asked through its handle; shutting the socket ends the session
//! whatever state it is in.

use std::os::fd::AsFd;

/// A second handle to `stream`'s socket; `shutdown(Both)` on it ends the connection for
/// whoever holds the stream. Fails only when the process is out of file descriptors.
pub fn second_handle(stream: &tokio::net::TcpStream) -> std::io::Result<std::net::TcpStream> {
    Ok(std::net::TcpStream::from(
        stream.as_fd().try_clone_to_owned()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn shutting_the_second_handle_ends_the_owners_reads() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut owned, _) = listener.accept().await.unwrap();
        let cut = second_handle(&owned).unwrap();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            owned.read(&mut buf).await
        });
        cut.shutdown(std::net::Shutdown::Both).unwrap();
        let read = reader.await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
