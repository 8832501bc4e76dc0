from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("cases", "0010_issue24_modelversion_guard"),
    ]

    operations = [
        migrations.AddField(
            model_name="batch",
            name="ood_cell_scores",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="batch",
            name="ood_cell_threshold",
            field=models.FloatField(blank=True, null=True),
        ),
    ]
