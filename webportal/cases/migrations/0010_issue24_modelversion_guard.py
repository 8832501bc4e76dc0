from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("cases", "0009_batch_check"),
    ]

    operations = [
        migrations.AddField(
            model_name="modelversion",
            name="guard",
            field=models.JSONField(blank=True, default=dict),
        ),
    ]
