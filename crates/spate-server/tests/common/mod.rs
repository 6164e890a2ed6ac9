//! What the in-process node tests share: a Kafka-protocol client over one TCP connection.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use spate_server::Node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Client {
    pub stream: TcpStream,
    pub correlation_id: i32,
}

impl Client {
    pub async fn connect(node: &Node) -> Client {
        Client {
            stream: TcpStream::connect(node.kafka_addr).await.expect("connect"),
            correlation_id: 0,
        }
    }

    pub async fn send_raw(&mut self, frame: &[u8]) {
        self.stream
            .write_all(&(frame.len() as i32).to_be_bytes())
            .await
            .expect("write");
        self.stream.write_all(frame).await.expect("write");
    }

    pub async fn read_raw(&mut self) -> Bytes {
        let mut len = [0u8; 4];
        self.stream
            .read_exact(&mut len)
            .await
            .expect("response length");
        let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream
            .read_exact(&mut body)
            .await
            .expect("response body");
        Bytes::from(body)
    }

    pub async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &Req,
    ) -> Resp {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("node-test")));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, key.request_header_version(version))
            .expect("encode header");
        request.encode(&mut buf, version).expect("encode body");
        self.send_raw(&buf).await;
        let mut response = self.read_raw().await;
        let header = ResponseHeader::decode(&mut response, key.response_header_version(version))
            .expect("header");
        assert_eq!(header.correlation_id, self.correlation_id);
        Resp::decode(&mut response, version).expect("decode response")
    }
}
