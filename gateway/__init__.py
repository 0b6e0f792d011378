"""The messaging gateway: send jobs in from RabbitMQ or HTTP, messages out, outcomes recorded."""
