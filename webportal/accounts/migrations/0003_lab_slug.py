from django.db import migrations, models
from django.utils.text import slugify


def fill_slugs(apps, schema_editor):
    """Every existing lab gets a unique slug from its name; the demo lab's is `demo`."""
    Lab = apps.get_model("accounts", "Lab")
    taken: set[str] = set()
    for lab in Lab.objects.order_by("id"):
        base = "demo" if lab.name == "Demo Lab" else (slugify(lab.name)[:40] or "lab")
        slug, n = base, 2
        while slug in taken:
            slug, n = f"{base}-{n}", n + 1
        taken.add(slug)
        lab.slug = slug
        lab.save(update_fields=["slug"])


class Migration(migrations.Migration):
    dependencies = [("accounts", "0002_initial")]

    operations = [
        migrations.AddField(
            model_name="lab",
            name="slug",
            # No index yet: the unique index comes with the AlterField below (an indexed
            # SlugField altered to unique makes PostgreSQL build its "_like" index twice).
            field=models.SlugField(max_length=50, null=True, db_index=False),
        ),
        migrations.RunPython(fill_slugs, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="lab",
            name="slug",
            field=models.SlugField(max_length=50, unique=True),
        ),
    ]
