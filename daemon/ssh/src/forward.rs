//! Forward mode (`ssh.mode = "forward"`): the target relays each overlay port-22 connection
//! from its hub to the machine's own `sshd` at `ssh.forward_to` (default `127.0.0.1:22`).
//!
//! The relay only moves bytes: the SSH session is end to end between the hub's pool and sshd.
//! The hub checks sshd's host key against the one pinned at enrollment (the target sent the
//! contents of `ssh.host_key_file` instead of its own key) and logs in as `ssh.run_as` with its
//! client key, which the operator put in that user's `authorized_keys`. Because the target
//! cannot read the encrypted session, its own `[policy]` does not see the commands in this
//! mode: the hub's policy and audit still apply to every request, sshd's own logging and
//! `authorized_keys` options (`from=`, `command=`, `restrict`) are the target-side controls.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::SshError;

/// Bytes relayed in each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relayed {
    /// From the hub to sshd.
    pub to_sshd: u64,
    /// From sshd to the hub.
    pub from_sshd: u64,
}

/// Connects to `to` (within `connect_timeout`) and relays `stream` to it until either side
/// closes.
pub async fn relay<S>(
    mut stream: S,
    to: SocketAddr,
    connect_timeout: Duration,
) -> Result<Relayed, SshError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let fail = |reason: String| SshError::Forward {
        addr: to.to_string(),
        reason,
    };
    let mut sshd = tokio::time::timeout(connect_timeout, TcpStream::connect(to))
        .await
        .map_err(|_| {
            fail(format!(
                "no answer within {:.1} s",
                connect_timeout.as_secs_f64()
            ))
        })?
        .map_err(|e| fail(e.to_string()))?;
    let _ = sshd.set_nodelay(true);
    let (to_sshd, from_sshd) = tokio::io::copy_bidirectional(&mut stream, &mut sshd)
        .await
        .map_err(|e| fail(format!("the relay broke: {e}")))?;
    Ok(Relayed { to_sshd, from_sshd })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_both_ways_and_reports_an_absent_sshd() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let (mut near, far) = tokio::io::duplex(1024);
        let relay = tokio::spawn(super::relay(far, addr, std::time::Duration::from_secs(2)));
        near.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        near.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
        drop(near);
        echo.await.unwrap();
        let r = relay.await.unwrap().unwrap();
        assert_eq!((r.to_sshd, r.from_sshd), (5, 5));

        // Nothing listens on a port just released.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = l.local_addr().unwrap();
        drop(l);
        let (_near, far) = tokio::io::duplex(16);
        let e = super::relay(far, gone, std::time::Duration::from_secs(2))
            .await
            .expect_err("refused");
        assert!(e.to_string().contains("ssh.forward_to"), "{e}");
    }
}
