"""AWS adapters: the only modules that talk to boto3. Each has one job."""
