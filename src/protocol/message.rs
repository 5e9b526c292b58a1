//! JSON-RPC 2.0 messages as the transport sees them: parsed once, kept cheap.

use std::{fmt, sync::Arc};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A JSON-RPC request id: a number or a string (never `null`).
///
/// # Example
///
/// ```
/// use mcp_affinity::protocol::RequestId;
///
/// let id: RequestId = serde_json::from_str("7").unwrap();
/// assert_eq!(id, RequestId::Number(7));
/// assert_eq!(serde_json::to_string(&RequestId::from("a")).unwrap(), "\"a\"");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum RequestId {
    /// A numeric id.
    Number(i64),
    /// A string id.
    String(Arc<str>),
}

// By hand rather than `#[serde(untagged)]`, which buffers every id into serde's `Content`
// before trying each variant: the id is read on every request. Same outcome: an integer that
// fits `i64` or a string; anything else (a fraction, `null`, an object) is an error.
impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RequestId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<RequestId, E> {
                Ok(RequestId::Number(n))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<RequestId, E> {
                i64::try_from(n).map(RequestId::Number).map_err(|_| {
                    E::invalid_value(serde::de::Unexpected::Unsigned(n), &"an i64 integer")
                })
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<RequestId, E> {
                Ok(RequestId::String(s.into()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl From<&str> for RequestId {
    fn from(s: &str) -> Self {
        Self::String(s.into())
    }
}

impl From<i64> for RequestId {
    fn from(n: i64) -> Self {
        Self::Number(n)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::String(s) => write!(f, "{s:?}"),
        }
    }
}

/// What kind of JSON-RPC message a body holds.
///
/// # Example
///
/// ```
/// use mcp_affinity::protocol::{Message, MessageKind};
///
/// let n = Message::parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
/// assert_eq!(n.kind(), MessageKind::Notification);
/// let r = Message::parse(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).unwrap();
/// assert_eq!(r.kind(), MessageKind::Response);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A request: `method` and `id`.
    Request,
    /// A notification: `method`, no `id`.
    Notification,
    /// A response: `id` and `result` or `error`.
    Response,
}

/// One parsed JSON-RPC message, as put into request extensions by the transport.
///
/// The params stay unparsed ([`RawValue`]) until a handler asks for them.
///
/// # Example
///
/// ```
/// use mcp_affinity::protocol::{Message, MessageKind};
///
/// let m = Message::parse(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).unwrap();
/// assert_eq!(m.kind(), MessageKind::Request);
/// assert_eq!(m.method(), Some("ping"));
/// ```
#[derive(Debug, Clone)]
pub struct Message {
    kind: MessageKind,
    id: Option<RequestId>,
    method: Option<Box<str>>,
    params: Option<Box<RawValue>>,
    result: Option<Box<RawValue>>,
    error: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Wire<'a> {
    // Borrowed: only compared with "2.0", never kept.
    #[serde(borrow)]
    jsonrpc: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "present")]
    id: Option<Option<RequestId>>,
    method: Option<Box<str>>,
    params: Option<Box<RawValue>>,
    result: Option<Box<RawValue>>,
    error: Option<Box<RawValue>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<RequestId>>, D::Error> {
    Option::<RequestId>::deserialize(d).map(Some)
}

/// Why a body is not one valid JSON-RPC message.
///
/// # Example
///
/// ```
/// use mcp_affinity::protocol::{Message, ParseError};
///
/// assert_eq!(Message::parse(b"not json").unwrap_err(), ParseError::Json);
/// let err = Message::parse(br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#).unwrap_err();
/// assert_eq!(err, ParseError::Invalid("jsonrpc must be \"2.0\""));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not JSON at all (`-32700`).
    Json,
    /// JSON, but not a JSON-RPC 2.0 message (`-32600`).
    Invalid(&'static str),
}

impl Message {
    /// Parses one JSON-RPC 2.0 message from a JSON object.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::{Message, RequestId};
    ///
    /// let m = Message::parse(br#"{"jsonrpc":"2.0","id":"a","method":"tools/list"}"#).unwrap();
    /// assert_eq!(m.id(), Some(&RequestId::from("a")));
    /// assert_eq!(m.method(), Some("tools/list"));
    /// // A null id is not allowed.
    /// assert!(Message::parse(br#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#).is_err());
    /// ```
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        // JSON text is UTF-8 (RFC 8259 §8.1). Checked here, once: serde_json's slice reader
        // checks only the strings it decodes, not those it skips (unknown fields), and the
        // `&str` reader then skips its own checks.
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Err(ParseError::Json);
        };
        let wire: Wire<'_> = match serde_json::from_str(text) {
            Ok(w) => w,
            Err(e) if e.is_data() => return Err(ParseError::Invalid("not a JSON-RPC 2.0 message")),
            Err(_) => return Err(ParseError::Json),
        };
        Self::from_wire(wire)
    }

    /// Parses a JSON-RPC 2.0 message from an already parsed value (a batch element).
    pub(crate) fn from_value(value: &RawValue) -> Result<Self, ParseError> {
        let wire: Wire<'_> = serde_json::from_str(value.get())
            .map_err(|_| ParseError::Invalid("not a JSON-RPC 2.0 message"))?;
        Self::from_wire(wire)
    }

    fn from_wire(w: Wire<'_>) -> Result<Self, ParseError> {
        if w.jsonrpc.map(RawValue::get) != Some("\"2.0\"") {
            return Err(ParseError::Invalid("jsonrpc must be \"2.0\""));
        }
        let id = match w.id {
            Some(None) => return Err(ParseError::Invalid("id must not be null")),
            Some(Some(id)) => Some(id),
            None => None,
        };
        let kind = match (&w.method, &id, w.result.is_some() || w.error.is_some()) {
            (Some(_), Some(_), false) => MessageKind::Request,
            (Some(_), None, false) => MessageKind::Notification,
            (None, Some(_), true) if w.result.is_some() != w.error.is_some() => {
                MessageKind::Response
            }
            _ => {
                return Err(ParseError::Invalid(
                    "not a request, notification or response",
                ));
            }
        };
        Ok(Self {
            kind,
            id,
            method: w.method,
            params: w.params,
            result: w.result,
            error: w.error,
        })
    }

    /// Request, notification or response.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::{Message, MessageKind};
    ///
    /// let m = Message::parse(br#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#).unwrap();
    /// assert_eq!(m.kind(), MessageKind::Request);
    /// ```
    pub fn kind(&self) -> MessageKind {
        self.kind
    }

    /// The id of a request or response.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::{Message, RequestId};
    ///
    /// let m = Message::parse(br#"{"jsonrpc":"2.0","id":7,"result":{}}"#).unwrap();
    /// assert_eq!(m.id(), Some(&RequestId::Number(7)));
    /// let n = Message::parse(br#"{"jsonrpc":"2.0","method":"notifications/cancelled"}"#).unwrap();
    /// assert_eq!(n.id(), None);
    /// ```
    pub fn id(&self) -> Option<&RequestId> {
        self.id.as_ref()
    }

    /// The method of a request or notification.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::Message;
    ///
    /// let m = Message::parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#).unwrap();
    /// assert_eq!(m.method(), Some("tools/call"));
    /// let r = Message::parse(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).unwrap();
    /// assert_eq!(r.method(), None);
    /// ```
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    /// The method, moved out as a `String` without a copy.
    pub(crate) fn into_method(self) -> Option<String> {
        self.method.map(String::from)
    }

    /// The raw params, if any.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::Message;
    ///
    /// let m = Message::parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#)
    ///     .unwrap();
    /// assert_eq!(m.params().map(|p| p.get()), Some(r#"{"name":"echo"}"#));
    /// ```
    pub fn params(&self) -> Option<&RawValue> {
        self.params.as_deref()
    }

    /// The raw `result` of a response.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::Message;
    ///
    /// let m = Message::parse(br#"{"jsonrpc":"2.0","id":1,"result":{"ok":true}}"#).unwrap();
    /// assert_eq!(m.result().map(|r| r.get()), Some(r#"{"ok":true}"#));
    /// assert!(m.error().is_none());
    /// ```
    pub fn result(&self) -> Option<&RawValue> {
        self.result.as_deref()
    }

    /// The raw `error` of a response.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::Message;
    ///
    /// let m = Message::parse(br#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"no"}}"#).unwrap();
    /// assert_eq!(m.error().map(|e| e.get()), Some(r#"{"code":-1,"message":"no"}"#));
    /// assert!(m.result().is_none());
    /// ```
    pub fn error(&self) -> Option<&RawValue> {
        self.error.as_deref()
    }

    /// Peeks at the fields of `params` the transport needs (never fails; absent on bad JSON).
    pub(crate) fn peek_params(&self) -> ParamsPeek {
        self.params
            .as_deref()
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .unwrap_or_default()
    }
}

/// The fields of `params` the transport looks at.
///
/// Read from a JSON object only (never positionally from an array), each field on its own: a
/// field of an unexpected type is absent without hiding the others (a wrong `requestId` must
/// not hide the `_meta` era claim), and of a repeated key the last wins, as for
/// `serde_json::Value`.
#[derive(Debug, Default)]
pub(crate) struct ParamsPeek {
    pub(crate) meta: Option<serde_json::Map<String, serde_json::Value>>,
    pub(crate) protocol_version: Option<serde_json::Value>,
    pub(crate) name: Option<serde_json::Value>,
    pub(crate) uri: Option<serde_json::Value>,
    pub(crate) task_id: Option<serde_json::Value>,
    pub(crate) request_id: Option<RequestId>,
    pub(crate) client_info: Option<serde_json::Value>,
    pub(crate) capabilities: Option<serde_json::Value>,
}

/// The keys of `params` that [`ParamsPeek`] reads (matched without an allocation).
enum PeekField {
    Meta,
    ProtocolVersion,
    Name,
    Uri,
    TaskId,
    RequestId,
    ClientInfo,
    Capabilities,
    Other,
}

impl<'de> Deserialize<'de> for PeekField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PeekField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<PeekField, E> {
                Ok(match s {
                    "_meta" => PeekField::Meta,
                    "protocolVersion" => PeekField::ProtocolVersion,
                    "name" => PeekField::Name,
                    "uri" => PeekField::Uri,
                    "taskId" => PeekField::TaskId,
                    "requestId" => PeekField::RequestId,
                    "clientInfo" => PeekField::ClientInfo,
                    "capabilities" => PeekField::Capabilities,
                    _ => PeekField::Other,
                })
            }
        }
        d.deserialize_identifier(Visitor)
    }
}

impl<'de> Deserialize<'de> for ParamsPeek {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ParamsPeek;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a params object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ParamsPeek, A::Error> {
                use serde_json::Value;
                let mut p = ParamsPeek::default();
                // `null` reads as absent, like an `Option` field.
                let value = |v: Value| (!v.is_null()).then_some(v);
                while let Some(key) = map.next_key::<PeekField>()? {
                    match key {
                        PeekField::Meta => {
                            p.meta = match map.next_value()? {
                                Value::Object(m) => Some(m),
                                _ => None,
                            };
                        }
                        PeekField::ProtocolVersion => {
                            p.protocol_version = value(map.next_value()?);
                        }
                        PeekField::Name => p.name = value(map.next_value()?),
                        PeekField::Uri => p.uri = value(map.next_value()?),
                        PeekField::TaskId => p.task_id = value(map.next_value()?),
                        PeekField::RequestId => {
                            p.request_id = RequestId::deserialize(map.next_value::<Value>()?).ok();
                        }
                        PeekField::ClientInfo => p.client_info = value(map.next_value()?),
                        PeekField::Capabilities => p.capabilities = value(map.next_value()?),
                        PeekField::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(p)
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// The body of a POST: one message or a batch.
#[derive(Debug)]
pub(crate) enum Body {
    Single(Message),
    #[allow(dead_code)]
    Batch(Vec<Message>),
}

/// Parses a POST body: one message, or a batch (an array of messages).
pub(crate) fn parse_body(bytes: &Bytes) -> Result<Body, ParseError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        let items: Vec<Box<RawValue>> =
            serde_json::from_slice(bytes).map_err(|_| ParseError::Json)?;
        if items.is_empty() {
            return Err(ParseError::Invalid("empty batch"));
        }
        let msgs = items
            .iter()
            .map(|v| Message::from_value(v))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Body::Batch(msgs))
    } else {
        Message::parse(bytes).map(Body::Single)
    }
}

/// Peeks at a JSON-RPC response body: the error code if it is an error response.
pub(crate) fn peek_error_code(bytes: &[u8]) -> Option<i64> {
    #[derive(Deserialize)]
    struct E {
        code: i64,
    }
    #[derive(Deserialize)]
    struct R {
        error: Option<E>,
    }
    serde_json::from_slice::<R>(bytes)
        .ok()?
        .error
        .map(|e| e.code)
}

/// Peeks at a JSON-RPC response: whether it is a success, and the protocolVersion of an
/// `InitializeResult`.
pub(crate) fn peek_initialize_result(bytes: &[u8]) -> Option<Option<String>> {
    #[derive(Deserialize)]
    struct Res {
        #[serde(rename = "protocolVersion")]
        protocol_version: Option<String>,
    }
    #[derive(Deserialize)]
    struct R {
        result: Option<Res>,
    }
    let r: R = serde_json::from_slice(bytes).ok()?;
    r.result.map(|res| res.protocol_version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_integers_or_strings() {
        let id = |s: &str| serde_json::from_str::<RequestId>(s).ok();
        assert_eq!(id("7"), Some(RequestId::Number(7)));
        assert_eq!(id("-7"), Some(RequestId::Number(-7)));
        assert_eq!(id(&i64::MAX.to_string()), Some(RequestId::Number(i64::MAX)));
        assert_eq!(id(&(i64::MAX as u64 + 1).to_string()), None);
        assert_eq!(id(r#""a\"b""#), Some(RequestId::from("a\"b")));
        assert_eq!(id(r#""""#), Some(RequestId::from("")));
        for bad in ["1.5", "null", "true", "{}", "[1]"] {
            assert_eq!(id(bad), None, "{bad}");
        }
        // Inside a message: a bad id is not JSON-RPC; a null id is refused by name.
        assert!(Message::parse(br#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#).is_err());
        assert_eq!(
            Message::parse(br#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#).unwrap_err(),
            ParseError::Invalid("id must not be null")
        );
        let m = Message::parse(br#"{"jsonrpc":"2.0","id":"x","method":"ping"}"#).unwrap();
        assert_eq!(m.id(), Some(&RequestId::from("x")));
        assert_eq!(m.into_method().as_deref(), Some("ping"));
    }

    #[test]
    fn kinds() {
        let n =
            Message::parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!(n.kind(), MessageKind::Notification);
        let r = Message::parse(br#"{"jsonrpc":"2.0","id":"x","result":{}}"#).unwrap();
        assert_eq!(r.kind(), MessageKind::Response);
        assert_eq!(r.id(), Some(&RequestId::from("x")));
    }

    #[test]
    fn rejects() {
        assert_eq!(Message::parse(b"{").unwrap_err(), ParseError::Json);
        assert!(matches!(
            Message::parse(br#"{"id":1,"method":"a"}"#),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(
            Message::parse(br#"{"jsonrpc":"2.0","id":null,"method":"a"}"#),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(
            Message::parse(br#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(Message::parse(b"[]"), Err(ParseError::Invalid(_))));
        assert!(matches!(Message::parse(b"42"), Err(ParseError::Invalid(_))));
    }

    #[test]
    fn batch() {
        let b = Bytes::from_static(
            br#" [{"jsonrpc":"2.0","method":"a"},{"jsonrpc":"2.0","id":2,"method":"b"}]"#,
        );
        assert!(matches!(parse_body(&b), Ok(Body::Batch(v)) if v.len() == 2));
        assert!(parse_body(&Bytes::from_static(b"[]")).is_err());
    }

    #[test]
    fn peeks() {
        assert_eq!(
            peek_error_code(br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"x"}}"#),
            Some(-32601)
        );
        assert_eq!(
            peek_error_code(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
            None
        );
        assert_eq!(
            peek_initialize_result(
                br#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25"}}"#
            ),
            Some(Some("2025-11-25".into()))
        );
        assert_eq!(
            peek_initialize_result(br#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":""}}"#),
            None
        );
    }

    /// Found by the `jsonrpc` fuzz target (see `tests/fuzz_regressions.rs`).
    #[test]
    fn params_are_peeked_from_an_object_each_field_on_its_own() {
        let peek = |params: &str| {
            let body = format!(r#"{{"jsonrpc":"2.0","method":"m","params":{params}}}"#);
            Message::parse(body.as_bytes()).unwrap().peek_params()
        };
        let p =
            peek(r#"{"requestId":1.5,"name":["x"],"_meta":{"k":1},"uri":"u","clientInfo":null}"#);
        assert_eq!(p.meta.map(|m| m.len()), Some(1));
        assert_eq!(p.uri, Some(serde_json::json!("u")));
        assert!(p.request_id.is_none() && p.client_info.is_none());
        assert_eq!(p.name, Some(serde_json::json!(["x"])));
        assert_eq!(
            peek(r#"{"requestId":"7"}"#).request_id,
            Some(RequestId::from("7"))
        );
        assert_eq!(
            peek(r#"{"requestId":7}"#).request_id,
            Some(RequestId::Number(7))
        );
        // The last of a repeated key, as `serde_json::Value` reads it.
        assert!(peek(r#"{"_meta":{"k":1},"_meta":5}"#).meta.is_none());
        assert!(peek(r#"{"_meta":5,"_meta":{"k":1}}"#).meta.is_some());
        // Never positionally: an array has no named fields.
        let p = peek(r#"[{"k":1},"2025-11-25","n","u","t",1,{},{}]"#);
        assert!(p.meta.is_none() && p.protocol_version.is_none() && p.request_id.is_none());
    }
}
