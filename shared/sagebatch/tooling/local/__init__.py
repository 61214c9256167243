"""The embedded local stack: moto for S3/SQS/DynamoDB, the endpoint emulator, and an event-source poller."""
