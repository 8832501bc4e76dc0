"""The REST API (views, serializers, permissions, schema) and the integrations pages."""
