"""Confluent's own Python client against dhanman's registry and topics.

Run by tests/pipeline/interop.rs with the pinned client (scripts/python-env.sh). Each
command prints one JSON document on stdout; the Rust test asserts on it. The registry
user's `name:secret` comes from SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO and is given to the
client as its `basic.auth.user.info`, as a Confluent user configures it.

  registry <registry-url> <subject> <schema-file> <incompatible-schema-file>
  consume  <bootstrap> <registry-url> <topic> <count>
  produce  <bootstrap> <registry-url> <topic> <schema-file> <record-json>
"""

import datetime
import decimal
import json
import os
import sys
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import (
    Schema,
    SchemaRegistryClient,
    topic_record_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def plain(value):
    """JSON form of what the deserializer returned (Decimal, dates, UUIDs as strings)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    return value


def client_for(url):
    conf = {"url": url}
    user_info = os.environ.get("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO")
    if user_info:
        conf["basic.auth.user.info"] = user_info
    return SchemaRegistryClient(conf)


def status_of(call):
    try:
        call()
        return 200
    except Exception as e:  # SchemaRegistryError carries the HTTP status
        status = getattr(e, "http_status_code", None)
        # Anything else (the connection dropped, say) is named, so a failure says what.
        return status if status is not None else f"{type(e).__name__}: {e}"


def registry(url, subject, schema_file, incompatible_file):
    anonymous = SchemaRegistryClient({"url": url})
    client = client_for(url)
    with open(schema_file) as f:
        schema = Schema(f.read(), "AVRO")
    with open(incompatible_file) as f:
        incompatible = Schema(f.read(), "AVRO")
    # Without credentials, writes are refused and reads are not.
    anonymous_register = status_of(lambda: anonymous.register_schema(subject, schema))
    anonymous_config = status_of(
        lambda: anonymous.set_compatibility(subject_name=subject, level="NONE"))
    first_id = client.register_schema(subject, schema)
    anonymous_lookup = status_of(lambda: anonymous.lookup_schema(subject, schema))
    again_id = client.register_schema(subject, schema)
    looked_up = client.lookup_schema(subject, schema)
    by_id = client.get_schema(first_id)
    set_level = client.set_compatibility(subject_name=subject, level="FULL")
    level = client.get_compatibility(subject)
    compatible_with_itself = client.test_compatibility(subject, schema)
    breaking_is_compatible = client.test_compatibility(subject, incompatible)
    refused = None
    try:
        client.register_schema(subject, incompatible)
    except Exception as e:  # SchemaRegistryError carries the HTTP status and Confluent code
        refused = {"http_status": getattr(e, "http_status_code", None),
                   "error_code": getattr(e, "error_code", None)}
    return {
        "anonymous_register": anonymous_register,
        "anonymous_config": anonymous_config,
        "anonymous_lookup": anonymous_lookup,
        "id": first_id,
        "id_again": again_id,
        "lookup_version": looked_up.version,
        "lookup_id": looked_up.schema_id,
        "schema_by_id_equal": json.loads(by_id.schema_str) == json.loads(schema.schema_str),
        "set_level": set_level,
        "level": level,
        "compatible_with_itself": compatible_with_itself,
        "breaking_is_compatible": breaking_is_compatible,
        "refused": refused,
        "subjects": client.get_subjects(),
        "versions": client.get_versions(subject),
    }


def consume(bootstrap, url, topic, count):
    client = client_for(url)
    deserializer = AvroDeserializer(client)
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "confluent-interop-" + str(uuid.uuid4()),
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    out = []
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=60)
    while len(out) < count and datetime.datetime.now() < deadline:
        message = consumer.poll(1.0)
        if message is None or message.error():
            continue
        value = deserializer(message.value(), SerializationContext(topic, MessageField.VALUE))
        out.append(plain(value))
    consumer.close()
    return out


def produce(bootstrap, url, topic, schema_file, record_json):
    client = client_for(url)
    with open(schema_file) as f:
        schema_str = f.read()
    serializer = AvroSerializer(client, schema_str, conf={
        "subject.name.strategy": topic_record_subject_name_strategy,
    })
    record = json.loads(record_json)
    # The Avro logical types want Python's types.
    record["amount"] = decimal.Decimal(record["amount"])
    if record.get("tax_amount") is not None:
        record["tax_amount"] = decimal.Decimal(record["tax_amount"])
    record["issue_date"] = datetime.date.fromisoformat(record["issue_date"])
    record["due_date"] = datetime.date.fromisoformat(record["due_date"])
    record["occurred_at"] = datetime.datetime.fromisoformat(record["occurred_at"])
    value = serializer(record, SerializationContext(topic, MessageField.VALUE))
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    delivered = []
    producer.produce(topic, key=record["customer_id"], value=value,
                     headers=[("correlation_id", record["correlation_id"])],
                     on_delivery=lambda err, msg: delivered.append(err is None))
    producer.flush(30)
    return {"delivered": delivered == [True], "schema_id": int.from_bytes(value[1:5], "big"),
            "magic": value[0]}


def main(argv):
    command = argv[1]
    if command == "registry":
        result = registry(*argv[2:6])
    elif command == "consume":
        result = consume(argv[2], argv[3], argv[4], int(argv[5]))
    elif command == "produce":
        result = produce(*argv[2:7])
    else:
        raise SystemExit("unknown command " + command)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main(sys.argv)
