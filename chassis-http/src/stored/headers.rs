//! The header fields of a response that are kept with it.

use http::{HeaderMap, header};

/// The headers a kept response repeats: not the hop-by-hop ones (RFC 9110 §7.6.1, and those the
/// `Connection` field names), not `Content-Length` (the replay's body sets it), and, without a
/// body, none describing it.
pub(crate) fn storable_headers(headers: &HeaderMap, body_omitted: bool) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    let mut kept = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let hop_by_hop = matches!(
            name.as_str(),
            "connection"
                | "keep-alive"
                | "proxy-connection"
                | "proxy-authenticate"
                | "proxy-authorization"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
                | "content-length"
        ) || named.iter().any(|n| n == name.as_str());
        let describes_body = matches!(
            name.as_str(),
            "content-type" | "content-encoding" | "content-range" | "etag"
        );
        if hop_by_hop || (body_omitted && describes_body) {
            continue;
        }
        kept.append(name.clone(), value.clone());
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_fields_are_not_kept() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("x-private, close"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("content-length", HeaderValue::from_static("4"));
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert("location", HeaderValue::from_static("/orders/7"));
        let kept = storable_headers(&headers, false);
        let names: Vec<_> = kept.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-type", "location"]);
        let kept = storable_headers(&headers, true);
        assert_eq!(
            kept.keys().map(|n| n.as_str()).collect::<Vec<_>>(),
            ["location"]
        );
    }
}
