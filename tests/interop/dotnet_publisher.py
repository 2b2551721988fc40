"""Publishes to RabbitMQ as Dhanman's .NET services do with RabbitMQ.Client: a JSON body with
the C# property names, the AMQP `type` property set to the class name, `message_id`,
`correlation_id`, persistent delivery (mode 2), content type application/json, and publisher
confirms (`ConfirmSelect` + `WaitForConfirmsOrDie`).

    python dotnet_publisher.py URL MESSAGES.jsonl
        each line: {"exchange": ..., "routing_key": ..., "type": ..., "message_id": ...,
                    "correlation_id": ..., "body": "<the JSON text, as the serializer wrote it>"}
        (a line may leave out type, message_id or correlation_id: that property is not set;
        "message_id_hex" instead of "message_id" sets the id to those bytes, UTF-8 or not;
        "expiration" and "user_id" set those properties, "transient": true delivery mode 1)
    python dotnet_publisher.py URL --invoices N --exchange X --customer C
        N InvoiceCreatedEvent messages for customer C, each with its own ids; prints the rate
        at which RabbitMQ confirmed them.

Prints the number of messages published (and confirmed) on stdout.
"""

import json
import sys
import time
import uuid

import pika


def connect(url):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    return connection, channel


def publish(channel, exchange, routing_key, body, type_name=None, message_id=None, correlation_id=None,
            expiration=None, user_id=None, transient=False):
    properties = pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Transient if transient else pika.DeliveryMode.Persistent,
        type=type_name,
        message_id=message_id,
        correlation_id=correlation_id,
        expiration=expiration,
        user_id=user_id,
    )
    # With confirms on, basic_publish returns once the broker confirmed (raises if nacked).
    channel.basic_publish(exchange=exchange, routing_key=routing_key, body=body.encode(), properties=properties)


def main(argv):
    url = argv[1]
    connection, channel = connect(url)
    count = 0
    if argv[2] == "--invoices":
        n = int(argv[3])
        options = dict(zip(argv[4::2], argv[5::2]))
        started = time.monotonic()
        for i in range(n):
            body = json.dumps({
                "InvoiceId": str(uuid.uuid4()),
                "CustomerId": options["--customer"],
                "Amount": 1000 + i % 100,
                "DueDate": "2026-12-10T00:00:00",
                "CreatedAt": "2026-12-01T00:00:00",
            })
            publish(channel, options["--exchange"], "", body, "InvoiceCreatedEvent", str(uuid.uuid4()), f"rate-{i}")
            count += 1
        elapsed = time.monotonic() - started
        print(f"published {count} in {elapsed:.2f}s ({count / elapsed:.0f}/s)", file=sys.stderr)
    else:
        with open(argv[2]) as lines:
            for line in lines:
                if not line.strip():
                    continue
                m = json.loads(line)
                message_id = m.get("message_id")
                if "message_id_hex" in m:
                    message_id = bytes.fromhex(m["message_id_hex"])
                publish(channel, m["exchange"], m.get("routing_key", ""), m["body"], m.get("type"),
                        message_id, m.get("correlation_id"), m.get("expiration"), m.get("user_id"),
                        m.get("transient", False))
                count += 1
    connection.close()
    print(count)


if __name__ == "__main__":
    main(sys.argv)
