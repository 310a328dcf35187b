//! Ports inside a sandbox: a forwarded host address ([`Client::port_address`]) and the URL of
//! the HTTP reverse proxy ([`Client::proxy_url`]).

use reqwest::Method;
use warren_api::PortAddress;

use crate::{Client, Error, SandboxHandle};

impl Client {
    /// `GET /v1/sandboxes/{id}/ports/{port}`: the host address where `port` of the sandbox is
    /// reachable (made on first use, the same afterwards, closed when the sandbox is deleted).
    /// Only reachable from the server's host.
    pub async fn port_address(&self, id: &str, port: u16) -> Result<PortAddress, Error> {
        let port = port.to_string();
        self.call(
            Method::GET,
            &["v1", "sandboxes", id, "ports", &port],
            None::<&()>,
        )
        .await
    }

    /// The URL of the server's reverse proxy to `port` inside the sandbox
    /// (`{base}/v1/sandboxes/{id}/proxy/{port}/`); append a path to reach a page. Makes no
    /// request. Works for WebSockets too (use `ws://` instead of `http://`).
    pub fn proxy_url(&self, id: &str, port: u16) -> String {
        let port = port.to_string();
        let mut url = self.url(&["v1", "sandboxes", id, "proxy", &port, ""]);
        url.set_query(None);
        url.to_string()
    }
}

impl SandboxHandle {
    /// See [`Client::port_address`].
    pub async fn port_address(&self, port: u16) -> Result<PortAddress, Error> {
        self.client.port_address(&self.id, port).await
    }

    /// See [`Client::proxy_url`].
    pub fn proxy_url(&self, port: u16) -> String {
        self.client.proxy_url(&self.id, port)
    }
}

#[cfg(test)]
mod tests {
    use warren_server::testing::TestServer;

    use crate::Client;

    #[tokio::test]
    async fn port_address_and_proxy_url() {
        let srv = TestServer::start().await;
        let client = Client::new(&srv.url).unwrap();
        let sb = client
            .create_sandbox(&warren_api::CreateSandboxRequest::default())
            .await
            .unwrap();
        let handle = client.sandbox(&sb.id);
        let f = handle.port_address(8080).await.unwrap();
        assert_eq!(f.port, 8080);
        assert!(f.address.ip().is_loopback());
        assert_eq!(f.url, format!("http://{}", f.address));
        let err = handle.port_address(0).await.unwrap_err();
        assert_eq!(err.code(), Some("invalid_request"));

        let url = handle.proxy_url(8080);
        assert_eq!(
            url,
            format!("{}/v1/sandboxes/{}/proxy/8080/", srv.url, sb.id)
        );
        let text = reqwest::get(format!("{url}hello?q=1"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.starts_with("GET /hello?q=1\n"), "{text}");
    }
}
