//! The XML stream parser (`shared/proto/src/xml/parser.rs`) as a client's pre-auth stream drives it
//! (`shared/net/src/stream.rs`, `shared/net/src/c2s.rs`).
//!
//! Input: one byte that picks how the rest is chunked (see `Chunks`; bit 0x40 also frees the
//! parser's buffers after every chunk, as an idle `XmlStream` does), then the stream bytes.
//! A `<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>` element restarts the stream with the
//! post-auth limits (a successful SASL login); an `<iq><query xmlns='jabber:iq:auth'/></iq>`
//! raises the limits without a restart (a legacy login), as `c2s.rs` does.
//!
//! Properties:
//! - no panic; after an error the parser keeps failing; `Ok(None)` consumed all input;
//! - chunking (and freeing the buffers) changes nothing: the events and the error condition
//!   equal those of the same bytes parsed in one piece;
//! - every element stays within the limits in force: depth <= `max_depth`, text and
//!   attribute bytes <= `max_stanza`;
//! - every element serialized as a c2s stream sends it (`write_to(.., jabber:client)`) and as
//!   a farm link frames it (`write_to(.., jabber:server)`) parses back to an equal element.

#![no_main]

use jabberfarm_fuzz::{
    C2S_HEADER, Chunks, LINK_HEADER, content_bytes, element_depth, known_finding, reparse,
    skip_known,
};
use jabberfarm_proto::ns;
use jabberfarm_proto::xml::{Condition, Element, ParserLimits, StreamEvent, StreamParser};
use libfuzzer_sys::fuzz_target;

/// What one run of the stream gave: its events, and how it ended.
#[derive(Debug, PartialEq)]
struct Outcome {
    events: Vec<StreamEvent>,
    error: Option<Condition>,
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let whole = run(0, stream);
    if seed != 0 {
        let chunked = run(seed, stream);
        assert_eq!(
            whole, chunked,
            "chunking (seed {seed:#04x}) changed what the parser saw"
        );
    }
});

fn run(seed: u8, stream: &[u8]) -> Outcome {
    let release = seed & 0x40 != 0;
    let mut limits = ParserLimits::PRE_AUTH;
    let mut parser = StreamParser::new(limits);
    let mut events = Vec::new();
    for chunk in Chunks::new(seed, stream) {
        let mut buf = chunk;
        loop {
            match parser.parse(&mut buf) {
                Ok(None) => {
                    assert!(buf.is_empty(), "Ok(None) left {} bytes unread", buf.len());
                    break;
                }
                Ok(Some(StreamEvent::Close)) => {
                    events.push(StreamEvent::Close);
                    return Outcome {
                        events,
                        error: None,
                    };
                }
                Ok(Some(StreamEvent::Element(el))) => {
                    check_element(&el, limits);
                    if el.is("auth", ns::SASL) {
                        // SASL success: the stream restarts (c2s `Step::Restart`).
                        limits = ParserLimits::POST_AUTH;
                        parser = StreamParser::new(limits);
                    } else if el.is("iq", ns::CLIENT) && el.child("query", ns::IQ_AUTH).is_some() {
                        // Legacy iq:auth success: new limits, same stream.
                        limits = ParserLimits::POST_AUTH;
                        parser.set_limits(limits);
                    }
                    events.push(StreamEvent::Element(el));
                }
                Ok(Some(ev)) => events.push(ev),
                Err(e) => {
                    // An error is final: the stream is closed with it.
                    let mut rest: &[u8] = b"<a/>";
                    assert!(parser.parse(&mut rest).is_err(), "parser recovered");
                    return Outcome {
                        events,
                        error: Some(e.condition),
                    };
                }
            }
        }
        if release {
            parser.release_buffers();
        }
    }
    Outcome {
        events,
        error: None,
    }
}

fn check_element(el: &Element, limits: ParserLimits) {
    let depth = element_depth(el);
    assert!(
        depth <= limits.max_depth,
        "element of depth {depth} > {}",
        limits.max_depth
    );
    let size = content_bytes(el);
    assert!(
        size <= limits.max_stanza,
        "element with {size} content bytes > {}",
        limits.max_stanza
    );
    for (content_ns, header) in [(ns::CLIENT, C2S_HEADER), (ns::SERVER, LINK_HEADER)] {
        if skip_known() && known_finding(el, content_ns).is_some() {
            continue;
        }
        let (text, back) = reparse(el, content_ns, header);
        match back {
            Ok(back) => assert_eq!(
                &back, el,
                "round trip through {content_ns} changed the element; serialized: {text:?}"
            ),
            Err(e) => panic!(
                "serialized for {content_ns} does not parse back: {e}; serialized: {text:?}; element: {el:?}"
            ),
        }
    }
}
