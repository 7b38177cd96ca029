"""The eventbus.proto contract against the Go plugin's v0.3.x table.

Every Go field must exist with the same number, type and cardinality; reserved
ranges must stay reserved; anything we add must be numbered outside them. A
drift in either direction fails here before it reaches an engine.
"""

from google.protobuf.descriptor import FieldDescriptor as F

from workflow_eventbus._proto import eventbus_pb2 as pb

S, B, I32, I64, E, M, BY = (
    F.TYPE_STRING,
    F.TYPE_BOOL,
    F.TYPE_INT32,
    F.TYPE_INT64,
    F.TYPE_ENUM,
    F.TYPE_MESSAGE,
    F.TYPE_BYTES,
)
REP = "repeated"
ONE = "single"

# message -> {field: (number, type, cardinality, type name for enums/messages)}
GO_CONTRACT = {
    "ClusterConfig": {
        "provider": (1, S, ONE, None),
        "deploy_target": (2, S, ONE, None),
        "version": (3, S, ONE, None),
        "replicas": (4, I32, ONE, None),
        "jetstream": (5, M, ONE, "JetStreamConfig"),
        "kafka": (6, M, ONE, "KafkaConfig"),
        "kinesis": (7, M, ONE, "KinesisConfig"),
        "limits": (8, M, ONE, "ResourceLimits"),
        "dsn": (10, S, ONE, None),
        "poll_interval": (11, S, ONE, None),
        "broker_target": (12, S, ONE, None),
        "max_conns": (13, I32, ONE, None),
    },
    "JetStreamConfig": {
        "enabled": (1, B, ONE, None),
        "max_storage_bytes": (2, I64, ONE, None),
        "max_memory_bytes": (3, I64, ONE, None),
        "max_age": (4, M, ONE, "Duration"),
    },
    "KafkaConfig": {
        "bootstrap_servers": (1, S, ONE, None),
        "security_protocol": (2, E, ONE, "KafkaSecurityProtocol"),
        "sasl_mechanism": (3, E, ONE, "KafkaSaslMechanism"),
        "default_replication_factor": (4, I32, ONE, None),
        "min_insync_replicas": (5, I32, ONE, None),
    },
    "KinesisConfig": {
        "region": (1, S, ONE, None),
        "shard_count": (2, I32, ONE, None),
        "retention_period_hours": (3, I32, ONE, None),
    },
    "ResourceLimits": {
        "cpu": (1, S, ONE, None),
        "memory": (2, S, ONE, None),
        "storage": (3, S, ONE, None),
    },
    "StreamConfig": {
        "name": (1, S, ONE, None),
        "subjects": (2, S, REP, None),
        "retention_policy": (3, E, ONE, "RetentionPolicy"),
        "num_replicas": (4, I32, ONE, None),
        "max_bytes": (5, I64, ONE, None),
        "max_age": (6, M, ONE, "Duration"),
        "ack_wait": (7, M, ONE, "Duration"),
        "broker_ref": (10, S, ONE, None),
    },
    "ConsumerConfig": {
        "name": (1, S, ONE, None),
        "stream_name": (2, S, ONE, None),
        "filter_subject": (3, S, ONE, None),
        "deliver_policy": (4, E, ONE, "DeliverPolicy"),
        "ack_policy": (5, E, ONE, "AckPolicy"),
        "max_deliver": (6, I32, ONE, None),
        "broker_ref": (10, S, ONE, None),
    },
    "PublishRequest": {
        "subject": (1, S, ONE, None),
        "payload": (2, BY, ONE, None),
        "headers": (3, M, REP, "HeadersEntry"),
        "correlation_id": (4, S, ONE, None),
        "broker_ref": (5, S, ONE, None),
    },
    "PublishResponse": {"sequence": (1, S, ONE, None), "acked_at": (2, S, ONE, None)},
    "ConsumeRequest": {
        "consumer": (1, S, ONE, None),
        "batch_size": (2, I32, ONE, None),
        "max_wait": (3, M, ONE, "Duration"),
        "broker_ref": (4, S, ONE, None),
    },
    "ConsumeResponse": {"messages": (1, M, REP, "Message")},
    "Message": {
        "subject": (1, S, ONE, None),
        "payload": (2, BY, ONE, None),
        "headers": (3, M, REP, "HeadersEntry"),
        "sequence": (4, S, ONE, None),
        "published_at": (5, S, ONE, None),
        "ack_token": (6, S, ONE, None),
    },
    "AckRequest": {"ack_token": (1, S, ONE, None), "broker_ref": (2, S, ONE, None)},
    "AckResponse": {},
}

GO_RESERVED = {
    "ClusterConfig": {9},
    "StreamConfig": {8, 9},
    "ConsumerConfig": {8, 9},
}

GO_ENUMS = {
    "RetentionPolicy": ["UNSPECIFIED", "LIMITS", "INTEREST", "WORKQUEUE"],
    "DeliverPolicy": ["UNSPECIFIED", "ALL", "LAST", "NEW", "BY_START_SEQUENCE", "BY_START_TIME"],
    "AckPolicy": ["UNSPECIFIED", "EXPLICIT", "NONE", "ALL"],
    "KafkaSecurityProtocol": ["UNSPECIFIED", "PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
    "KafkaSaslMechanism": ["UNSPECIFIED", "PLAIN", "SCRAM_SHA_256", "SCRAM_SHA_512"],
}
ENUM_PREFIX = {
    "RetentionPolicy": "RETENTION_POLICY_",
    "DeliverPolicy": "DELIVER_POLICY_",
    "AckPolicy": "ACK_POLICY_",
    "KafkaSecurityProtocol": "KAFKA_SECURITY_PROTOCOL_",
    "KafkaSaslMechanism": "KAFKA_SASL_MECHANISM_",
}


def test_file_identity():
    assert pb.DESCRIPTOR.name == "eventbus.proto"
    assert pb.DESCRIPTOR.package == "workflow.plugin.eventbus.v1"
    assert [d.name for d in pb.DESCRIPTOR.dependencies] == ["google/protobuf/duration.proto"]


def test_every_go_field_matches():
    for message, fields in GO_CONTRACT.items():
        desc = pb.DESCRIPTOR.message_types_by_name[message]
        for name, (number, kind, card, type_name) in fields.items():
            field = desc.fields_by_name.get(name)
            assert field is not None, f"{message}.{name} missing"
            assert field.number == number, f"{message}.{name} number {field.number} != {number}"
            assert field.type == kind, f"{message}.{name} type"
            assert field.is_repeated == (card == REP), f"{message}.{name} cardinality"
            if type_name:
                target = field.message_type or field.enum_type
                assert target.name == type_name, f"{message}.{name} -> {target.name}"


def test_headers_maps_are_string_to_string():
    for message in ("PublishRequest", "Message"):
        entry = pb.DESCRIPTOR.message_types_by_name[message].fields_by_name["headers"].message_type
        assert entry.GetOptions().map_entry
        assert entry.fields_by_name["key"].type == S
        assert entry.fields_by_name["value"].type == S


def test_extensions_never_use_go_numbers_or_reserved_ones():
    for message, go_fields in GO_CONTRACT.items():
        desc = pb.DESCRIPTOR.message_types_by_name[message]
        go_numbers = {spec[0] for spec in go_fields.values()}
        reserved = GO_RESERVED.get(message, set())
        for field in desc.fields:
            if field.name in go_fields:
                continue
            assert field.number not in go_numbers | reserved, (
                f"{message}.{field.name} reuses {field.number}"
            )
            assert field.number > max(go_numbers | reserved | {0}), (
                f"{message}.{field.name} ({field.number}) is not numbered after the Go fields"
            )
        if message == "ConsumerConfig":
            assert 7 not in {f.number for f in desc.fields}, (
                "7 is left alone, as in the Go contract"
            )


def test_reserved_ranges_are_declared():
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)
    by_name = {m.name: m for m in proto.message_type}
    for message, numbers in GO_RESERVED.items():
        declared = set()
        for r in by_name[message].reserved_range:
            declared.update(range(r.start, r.end))
        assert declared == numbers, message


def test_enums_match():
    for enum, names in GO_ENUMS.items():
        desc = pb.DESCRIPTOR.enum_types_by_name[enum]
        got = [(v.name, v.number) for v in desc.values]
        want = [(ENUM_PREFIX[enum] + n, i) for i, n in enumerate(names)]
        assert got == want
