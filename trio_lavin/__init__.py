"""trio-lavin: a trio-native AMQP 0-9-1 client for LavinMQ and RabbitMQ."""
