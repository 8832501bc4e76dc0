# Issue 21: webhook secrets encrypted at rest; deliveries become an outbox (next_attempt_at).

from django.db import migrations, models
from django.utils import timezone


def encrypt_secrets_and_schedule_pending(apps, schema_editor):
    from webportal import crypto

    Endpoint = apps.get_model("api", "WebhookEndpoint")
    for endpoint in Endpoint.objects.all():
        endpoint.secret_encrypted = crypto.encrypt(endpoint.secret)
        endpoint.save(update_fields=["secret_encrypted"])
    Delivery = apps.get_model("api", "WebhookDelivery")
    Delivery.objects.filter(status="pending", endpoint__is_active=True).update(
        next_attempt_at=timezone.now()
    )
    Delivery.objects.filter(status="pending", endpoint__is_active=False).update(
        status="cancelled"
    )


class Migration(migrations.Migration):
    dependencies = [
        ("api", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="webhookdelivery",
            name="next_attempt_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="webhookendpoint",
            name="secret_encrypted",
            field=models.TextField(default="", editable=False),
        ),
        migrations.AlterField(
            model_name="webhookdelivery",
            name="status",
            field=models.CharField(
                choices=[
                    ("pending", "Pending"),
                    ("delivered", "Delivered"),
                    ("failed", "Failed"),
                    ("cancelled", "Cancelled"),
                ],
                default="pending",
                max_length=10,
            ),
        ),
        migrations.RunPython(encrypt_secrets_and_schedule_pending, migrations.RunPython.noop),
        migrations.RemoveField(
            model_name="webhookendpoint",
            name="secret",
        ),
        migrations.AddIndex(
            model_name="webhookdelivery",
            index=models.Index(
                condition=models.Q(("status", "pending")),
                fields=["next_attempt_at"],
                name="webhook_delivery_due",
            ),
        ),
    ]
