//! XML for XMPP: the element type, the incremental stream parser, stream errors.

mod element;
pub mod parser;
pub mod stream_error;

pub use element::{Element, Name, Node, escape_attr_into, escape_into, escape_text_into, intern};
pub use parser::{ParserLimits, StreamEvent, StreamHeader, StreamParser, parse_element};
pub use stream_error::{Condition, StreamError};
