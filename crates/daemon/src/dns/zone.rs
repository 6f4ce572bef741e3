//! The `vm.` zone: what to answer for one question, and the hickory
//! [`RequestHandler`] that wraps it into a response.
//!
//! [`Zone::answer`] is pure (it calls only the [`Lookup`]), so the rules are
//! unit-tested without sockets; `tests.rs` checks them again over the wire.

use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Header, HeaderCounts, LowerQuery, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use super::{Lookup, TTL};

/// The EDNS payload size we advertise (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;

/// What to send back for one question.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Reply {
    pub code: ResponseCode,
    /// Set for every answer about the `vm.` zone, clear for REFUSED.
    pub authoritative: bool,
    pub answers: Vec<Record>,
    /// The zone's SOA, in the authority section of negative answers
    /// (NXDOMAIN, NODATA) so resolvers can cache them (RFC 2308).
    pub soa: Option<Record>,
}

impl Reply {
    fn refused() -> Reply {
        Reply {
            code: ResponseCode::Refused,
            authoritative: false,
            answers: Vec::new(),
            soa: None,
        }
    }
}

/// The `vm.` zone, answered from a [`Lookup`].
pub(super) struct Zone {
    lookup: Lookup,
    soa: Record,
    ns: Record,
}

impl Zone {
    pub(super) fn new(lookup: Lookup) -> Zone {
        let apex = Name::from_ascii("vm.").expect("static name");
        // The zone names itself as its primary and only name server: no VM
        // can be called that (VM names are one label below `vm.`).
        let soa = SOA::new(
            apex.clone(),
            Name::from_ascii("hostmaster.vm.").expect("static name"),
            1,
            3600,
            600,
            86400,
            TTL, // negative-caching TTL: a VM that appears is seen within TTL
        );
        Zone {
            lookup,
            soa: Record::from_rdata(apex.clone(), TTL, RData::SOA(soa)),
            ns: Record::from_rdata(apex.clone(), TTL, RData::NS(NS(apex))),
        }
    }

    /// The reply to one question. Names arrive lower-cased (a [`LowerQuery`]);
    /// answers carry the name as the client spelled it.
    pub(super) fn answer(&self, query: &LowerQuery) -> Reply {
        if query.query_class() != DNSClass::IN {
            return Reply::refused();
        }
        let labels: Vec<&[u8]> = query.name().iter().collect();
        let Some((&last, below)) = labels.split_last() else {
            return Reply::refused(); // the root
        };
        if last != b"vm" {
            return Reply::refused(); // not ours: we do not recurse
        }
        let qtype = query.query_type();
        match below {
            [] => self.apex(qtype),
            [label] => match self.vm_addr(label) {
                Some(addr) => self.vm(query, qtype, addr),
                None => self.negative(ResponseCode::NXDomain, Vec::new()),
            },
            // Nothing lives below a VM name.
            _ => self.negative(ResponseCode::NXDomain, Vec::new()),
        }
    }

    /// The address of the VM named by `label`, if it is a valid VM name and
    /// the lookup knows it.
    fn vm_addr(&self, label: &[u8]) -> Option<Ipv4Addr> {
        let name = std::str::from_utf8(label).ok()?;
        banger_proto::names::validate_name(name).ok()?;
        (self.lookup)(name)
    }

    fn apex(&self, qtype: RecordType) -> Reply {
        let answers = match qtype {
            RecordType::SOA => vec![self.soa.clone()],
            RecordType::NS => vec![self.ns.clone()],
            RecordType::ANY => vec![self.soa.clone(), self.ns.clone()],
            _ => Vec::new(),
        };
        if answers.is_empty() {
            self.negative(ResponseCode::NoError, answers)
        } else {
            self.positive(answers)
        }
    }

    fn vm(&self, query: &LowerQuery, qtype: RecordType, addr: Ipv4Addr) -> Reply {
        match qtype {
            RecordType::A | RecordType::ANY => {
                let owner = query.original().name().clone();
                self.positive(vec![Record::from_rdata(owner, TTL, RData::A(A(addr)))])
            }
            // AAAA and everything else: the name exists, the type does not.
            _ => self.negative(ResponseCode::NoError, Vec::new()),
        }
    }

    fn positive(&self, answers: Vec<Record>) -> Reply {
        Reply {
            code: ResponseCode::NoError,
            authoritative: true,
            answers,
            soa: None,
        }
    }

    fn negative(&self, code: ResponseCode, answers: Vec<Record>) -> Reply {
        Reply {
            code,
            authoritative: true,
            answers,
            soa: Some(self.soa.clone()),
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Zone {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let mut builder = MessageResponseBuilder::from_message_request(request);
        let resp_edns;
        if let Some(req_edns) = &request.edns {
            let mut e = Edns::new();
            e.set_max_payload(EDNS_PAYLOAD).set_version(0);
            resp_edns = e;
            builder.edns(&resp_edns);
            if req_edns.version() > 0 {
                metadata.response_code = ResponseCode::BADVERS;
                return send(&mut response_handle, builder, metadata, None).await;
            }
        }

        let queries = request.queries.queries();
        let reply = match (request.metadata.op_code, queries) {
            (OpCode::Query, [query]) => {
                let reply = self.answer(query);
                tracing::debug!(
                    src = %request.src(),
                    protocol = %request.protocol(),
                    name = %query.name(),
                    qtype = %query.query_type(),
                    rcode = %reply.code,
                    answers = reply.answers.len(),
                    "dns query"
                );
                reply
            }
            (OpCode::Query, _) => {
                tracing::debug!(src = %request.src(), n = queries.len(), "dns: not one question");
                metadata.response_code = ResponseCode::FormErr;
                return send(&mut response_handle, builder, metadata, None).await;
            }
            (op, _) => {
                tracing::debug!(src = %request.src(), %op, "dns: opcode not implemented");
                metadata.response_code = ResponseCode::NotImp;
                return send(&mut response_handle, builder, metadata, None).await;
            }
        };
        metadata.response_code = reply.code;
        metadata.authoritative = reply.authoritative;
        send(&mut response_handle, builder, metadata, Some(&reply)).await
    }
}

async fn send<R: ResponseHandler>(
    handle: &mut R,
    builder: MessageResponseBuilder<'_>,
    metadata: Metadata,
    reply: Option<&Reply>,
) -> ResponseInfo {
    let (answers, soa) = match reply {
        Some(r) => (r.answers.as_slice(), r.soa.as_slice()),
        None => (&[][..], &[][..]),
    };
    let response = builder.build(metadata, answers, &[], soa, &[]);
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            tracing::debug!(%error, "dns: cannot send the response");
            let mut metadata = metadata;
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        }
    }
}

#[cfg(test)]
mod unit {
    use std::collections::HashMap;
    use std::sync::Arc;

    use hickory_proto::op::Query;

    use super::*;

    fn zone() -> Zone {
        let vms: HashMap<&str, Ipv4Addr> = [("box", Ipv4Addr::new(10, 0, 0, 2))].into();
        Zone::new(Arc::new(move |n: &str| vms.get(n).copied()))
    }

    fn ask(name: &str, qtype: RecordType) -> Reply {
        let q = Query::query(Name::from_ascii(name).unwrap(), qtype);
        zone().answer(&LowerQuery::query(q))
    }

    fn ask_class(name: &str, class: DNSClass) -> Reply {
        let mut q = Query::query(Name::from_ascii(name).unwrap(), RecordType::A);
        q.set_query_class(class);
        zone().answer(&LowerQuery::query(q))
    }

    fn a_of(r: &Reply) -> Vec<Ipv4Addr> {
        r.answers
            .iter()
            .filter_map(|r| match r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn known_vm_a() {
        for name in ["box.vm.", "box.vm", "BOX.Vm.", "bOx.VM"] {
            let r = ask(name, RecordType::A);
            assert_eq!(r.code, ResponseCode::NoError, "{name}");
            assert!(r.authoritative);
            assert_eq!(a_of(&r), [Ipv4Addr::new(10, 0, 0, 2)], "{name}");
            assert_eq!(r.answers[0].ttl, TTL);
            // The answer echoes the client's spelling (0x20 randomisation).
            assert_eq!(
                r.answers[0].name.to_ascii().trim_end_matches('.'),
                name.trim_end_matches('.')
            );
        }
        assert_eq!(a_of(&ask("box.vm.", RecordType::ANY)).len(), 1);
    }

    #[test]
    fn known_vm_other_types_are_nodata() {
        for t in [
            RecordType::AAAA,
            RecordType::MX,
            RecordType::TXT,
            RecordType::SOA,
        ] {
            let r = ask("box.vm.", t);
            assert_eq!(r.code, ResponseCode::NoError, "{t}");
            assert!(r.answers.is_empty(), "{t}");
            assert!(r.soa.is_some(), "{t}");
            assert!(r.authoritative);
        }
    }

    #[test]
    fn unknown_and_invalid_names_are_nxdomain() {
        let odd: [&[u8]; 7] = [b"-box", b"box-", b"b_x", b"b.x", b"\xc8", b"b x", b"BOX\0"];
        let mut names: Vec<Name> = odd
            .iter()
            .map(|l| Name::from_labels([*l, b"vm"]).unwrap())
            .collect();
        names.push(Name::from_ascii("nope.vm.").unwrap());
        names.push(Name::from_ascii("a.box.vm.").unwrap());
        names.push(Name::from_labels([&[b'x'; 63][..], b"vm"]).unwrap());
        for name in names {
            let r = zone().answer(&LowerQuery::query(Query::query(
                name.clone(),
                RecordType::A,
            )));
            assert_eq!(r.code, ResponseCode::NXDomain, "{name}");
            assert!(r.answers.is_empty());
            let soa = r.soa.expect("SOA in authority");
            assert_eq!(soa.name.to_ascii(), "vm.");
            assert_eq!(soa.record_type(), RecordType::SOA);
        }
    }

    #[test]
    fn names_outside_vm_are_refused() {
        for name in [".", "example.com.", "vm.example.", "box.vmx.", "box.v.m."] {
            let r = ask(name, RecordType::A);
            assert_eq!(r.code, ResponseCode::Refused, "{name}");
            assert!(!r.authoritative);
            assert!(r.answers.is_empty() && r.soa.is_none());
        }
        assert_eq!(
            ask_class("box.vm.", DNSClass::CH).code,
            ResponseCode::Refused
        );
    }

    #[test]
    fn apex() {
        let soa = ask("vm.", RecordType::SOA);
        assert_eq!(soa.code, ResponseCode::NoError);
        assert_eq!(soa.answers.len(), 1);
        assert_eq!(soa.answers[0].record_type(), RecordType::SOA);
        let ns = ask("VM", RecordType::NS);
        assert_eq!(ns.answers[0].record_type(), RecordType::NS);
        let a = ask("vm.", RecordType::A);
        assert_eq!(a.code, ResponseCode::NoError);
        assert!(a.answers.is_empty() && a.soa.is_some());
    }

    #[test]
    fn lookup_sees_the_lower_cased_label() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let zone = Zone::new(Arc::new(move |n: &str| {
            s.lock().unwrap().push(n.to_string());
            None
        }));
        let q = Query::query(Name::from_ascii("MiXeD.vm.").unwrap(), RecordType::A);
        zone.answer(&LowerQuery::query(q));
        let q = Query::query(Name::from_ascii("bad_name.vm.").unwrap(), RecordType::A);
        zone.answer(&LowerQuery::query(q));
        assert_eq!(*seen.lock().unwrap(), ["mixed"]);
    }
}
