//! An OTLP trace receiver inside the test: the collector's gRPC service (opentelemetry-proto's
//! generated server) and its HTTP/protobuf endpoint (`POST /v1/traces`), both keeping every
//! span they receive, flattened into [`ReceivedSpan`]s.
#![allow(dead_code)] // each test uses a different subset

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as ProtoValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message as _;

/// An attribute value as received.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    Other(String),
}

impl Attr {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Attr::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Attr::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_double(&self) -> Option<f64> {
        match self {
            Attr::Double(d) => Some(*d),
            _ => None,
        }
    }
}

pub type Attrs = BTreeMap<String, Attr>;

fn attrs(list: &[KeyValue]) -> Attrs {
    list.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(ProtoValue::StringValue(s)) => Attr::Str(s.clone()),
                Some(ProtoValue::IntValue(i)) => Attr::Int(*i),
                Some(ProtoValue::DoubleValue(d)) => Attr::Double(*d),
                Some(ProtoValue::BoolValue(b)) => Attr::Bool(*b),
                other => Attr::Other(format!("{other:?}")),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone)]
pub struct ReceivedEvent {
    pub name: String,
    pub time_unix_nano: u64,
    pub attributes: Attrs,
}

#[derive(Debug, Clone)]
pub struct ReceivedLink {
    pub trace_id: String,
    pub span_id: String,
}

#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service_name: Option<String>,
    pub scope: String,
    pub name: String,
    /// OTLP's SpanKind: 1 internal, 2 server.
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub attributes: Attrs,
    pub events: Vec<ReceivedEvent>,
    pub dropped_events: u32,
    pub links: Vec<ReceivedLink>,
}

pub const SPAN_KIND_INTERNAL: i32 = 1;
pub const SPAN_KIND_SERVER: i32 = 2;

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&Attr> {
        self.attributes.get(key)
    }
    pub fn event_names(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.name.as_str()).collect()
    }
}

fn flatten(request: &ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in &request.resource_spans {
        let service_name = resource_spans.resource.as_ref().and_then(|resource| {
            attrs(&resource.attributes)
                .get("service.name")
                .and_then(|v| v.as_str().map(str::to_string))
        });
        for scope_spans in &resource_spans.scope_spans {
            let scope = scope_spans
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for span in &scope_spans.spans {
                out.push(ReceivedSpan {
                    service_name: service_name.clone(),
                    scope: scope.clone(),
                    name: span.name.clone(),
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    start_time_unix_nano: span.start_time_unix_nano,
                    end_time_unix_nano: span.end_time_unix_nano,
                    attributes: attrs(&span.attributes),
                    events: span
                        .events
                        .iter()
                        .map(|e| ReceivedEvent {
                            name: e.name.clone(),
                            time_unix_nano: e.time_unix_nano,
                            attributes: attrs(&e.attributes),
                        })
                        .collect(),
                    dropped_events: span.dropped_events_count,
                    links: span
                        .links
                        .iter()
                        .map(|l| ReceivedLink {
                            trace_id: hex(&l.trace_id),
                            span_id: hex(&l.span_id),
                        })
                        .collect(),
                });
            }
        }
    }
    out
}

/// Everything received so far.
#[derive(Clone, Default)]
struct Store {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    requests: Arc<Mutex<usize>>,
}

impl Store {
    fn add(&self, request: &ExportTraceServiceRequest) {
        self.spans.lock().unwrap().extend(flatten(request));
        *self.requests.lock().unwrap() += 1;
    }
}

#[derive(Clone)]
struct GrpcService(Store);

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(request.get_ref());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Which OTLP transport a [`Receiver`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    HttpProtobuf,
}

/// A running receiver; it stops with the test's runtime.
pub struct Receiver {
    pub address: SocketAddr,
    pub transport: Transport,
    store: Store,
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1 on a free port.
    pub async fn start(transport: Transport) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let store = Store::default();
        match transport {
            Transport::Grpc => {
                let service = TraceServiceServer::new(GrpcService(store.clone()));
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming(incoming),
                );
            }
            Transport::HttpProtobuf => {
                let store = store.clone();
                let app = axum::Router::new().route(
                    "/v1/traces",
                    axum::routing::post(move |body: axum::body::Bytes| {
                        let store = store.clone();
                        async move {
                            match ExportTraceServiceRequest::decode(body) {
                                Ok(request) => {
                                    store.add(&request);
                                    let response = ExportTraceServiceResponse {
                                        partial_success: None,
                                    };
                                    (
                                        axum::http::StatusCode::OK,
                                        [("content-type", "application/x-protobuf")],
                                        response.encode_to_vec(),
                                    )
                                }
                                Err(_) => (
                                    axum::http::StatusCode::BAD_REQUEST,
                                    [("content-type", "text/plain")],
                                    b"not an ExportTraceServiceRequest".to_vec(),
                                ),
                            }
                        }
                    }),
                );
                tokio::spawn(async move { axum::serve(listener, app).await });
            }
        }
        Self {
            address,
            transport,
            store,
        }
    }

    /// The endpoint to give `--otlp-traces-endpoint`.
    pub fn endpoint(&self) -> String {
        match self.transport {
            Transport::Grpc => format!("http://{}", self.address),
            Transport::HttpProtobuf => format!("http://{}/v1/traces", self.address),
        }
    }

    /// `waypoint serve --model tiny` with `args` (and `env`), exporting to this receiver
    /// and flushing its batches every 100 ms. The test crate declares `mod process`
    /// (`common/process.rs`) beside `mod otlp`.
    pub fn serve(&self, args: &[&str], env: &[(&str, &str)]) -> crate::process::ServerProcess {
        let endpoint = self.endpoint();
        let mut all = args.to_vec();
        all.extend([
            "--otlp-traces-endpoint",
            &endpoint,
            "--otlp-protocol",
            self.protocol(),
        ]);
        let mut all_env = vec![("OTEL_BSP_SCHEDULE_DELAY", "100")];
        all_env.extend_from_slice(env);
        crate::process::ServerProcess::start(&all, &all_env)
    }

    /// The `--otlp-protocol` value.
    pub fn protocol(&self) -> &'static str {
        match self.transport {
            Transport::Grpc => "grpc",
            Transport::HttpProtobuf => "http/protobuf",
        }
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.store.spans.lock().unwrap().clone()
    }

    pub fn export_requests(&self) -> usize {
        *self.store.requests.lock().unwrap()
    }

    /// Waits until `done` holds for the spans received, or panics after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; received {} spans: {:#?}",
                spans.len(),
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
