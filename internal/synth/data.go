package synth

// Reference data for the generator. Codes are real SNOMED CT, ICD-10 and
// dm+d identifiers; the drug list is a small real subset, not a formulary.

// ageBands are the UK population's share by five-year age band (ONS mid-2021
// estimates, rounded), from 0-4 to 90+.
var ageBands = []float64{5.4, 5.9, 6.0, 5.6, 6.0, 6.5, 6.8, 6.6, 6.3, 6.4, 6.9, 6.8, 5.9, 5.0, 4.9, 3.6, 2.4, 1.4, 0.8}

// districts are Yorkshire and the Humber postcode districts.
var districts = func() []string {
	var d []string
	add := func(area string, from, to int) {
		for i := from; i <= to; i++ {
			d = append(d, area+itoa(i))
		}
	}
	add("LS", 1, 29)
	add("BD", 1, 24)
	add("HD", 1, 9)
	add("HX", 1, 7)
	add("WF", 1, 17)
	add("S", 1, 36)
	add("HU", 1, 20)
	add("YO", 1, 32)
	add("DN", 1, 22)
	add("HG", 1, 5)
	return d
}()

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return string(rune('0'+i/10)) + string(rune('0'+i%10))
}

// inwardLetters are the letters used in the inward code of a postcode.
const inwardLetters = "ABDEFGHJLNPQRSTUWXYZ"

// ethnicity holds NHS ethnic category codes with weights roughly as in
// Yorkshire and the Humber (Census 2021).
var ethnicity = []struct {
	code   string
	weight float64
}{
	{"A", 79}, {"B", 0.6}, {"C", 3.4}, {"D", 0.6}, {"E", 0.3}, {"F", 0.5}, {"G", 0.6},
	{"H", 1.3}, {"J", 5.4}, {"K", 0.5}, {"L", 1.2}, {"M", 0.4}, {"N", 1.2}, {"P", 0.3},
	{"R", 0.6}, {"S", 1.6}, {"Z", 2.1},
}

var maleNames = []string{"Oliver", "George", "Harry", "Jack", "Jacob", "Noah", "Charlie", "Muhammad", "Thomas", "Oscar", "William", "James", "Leo", "Alfie", "Henry", "Joshua", "Freddie", "Archie", "Ethan", "Isaac", "David", "John", "Michael", "Peter", "Paul", "Mark", "Richard", "Stephen", "Andrew", "Robert", "Ian", "Gary", "Imran", "Amir"}
var femaleNames = []string{"Olivia", "Amelia", "Isla", "Ava", "Mia", "Isabella", "Sophia", "Grace", "Lily", "Freya", "Emily", "Ivy", "Ella", "Rosie", "Evie", "Florence", "Poppy", "Charlotte", "Susan", "Margaret", "Patricia", "Elizabeth", "Sarah", "Karen", "Helen", "Julie", "Joanne", "Fatima", "Aisha", "Zainab", "Mary", "Anne", "Jean", "Siobhan"}
var familyNames = []string{"Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Robinson", "Wright", "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall", "Wood", "Jackson", "Clarke", "Hussain", "Khan", "Ahmed", "Patel", "Shaw", "Lee", "Atkinson", "Holmes", "Sutcliffe", "Hirst", "Brook", "O'Brien", "Ackroyd", "Firth", "Haigh", "Barraclough"}

// practices are ODS codes of GP practices (letter and five digits).
var practices = func() []string {
	var p []string
	for _, pre := range []string{"B86", "B82", "B83", "B85", "B87", "C87", "C88", "B81"} {
		for i := 1; i <= 12; i++ {
			p = append(p, pre+"0"+itoa(10+i)) // e.g. B86011
		}
	}
	return p
}()

var organisations = []string{
	"Leeds Teaching Hospitals NHS Trust",
	"Bradford Teaching Hospitals NHS Foundation Trust",
	"Sheffield Teaching Hospitals NHS Foundation Trust",
	"Hull University Teaching Hospitals NHS Trust",
	"York and Scarborough Teaching Hospitals NHS Foundation Trust",
	"Mid Yorkshire Teaching NHS Trust",
	"Calderdale and Huddersfield NHS Foundation Trust",
	"Doncaster and Bassetlaw Teaching Hospitals NHS Foundation Trust",
	"Harrogate and District NHS Foundation Trust",
	"Airedale NHS Foundation Trust, Steeton",
}

// A condition has a SNOMED CT code for primary care, an ICD-10 code for
// hospital coding, an adult prevalence that rises with age, and drugs.
type condition struct {
	name   string
	snomed string
	icd10  string
	// prevalence at ages 20, 50 and 80 (linear between)
	prev  [3]float64
	drugs []drug
}

type drug struct {
	code string // dm+d
	name string
}

var conditions = []condition{
	{"hypertension", "38341003", "I10", [3]float64{0.02, 0.15, 0.55}, []drug{
		{"318821008", "Captopril 25mg tablets"}, {"318824000", "Captopril 50mg tablets"}, {"318820009", "Captopril 12.5mg tablets"}}},
	{"type 2 diabetes", "44054006", "E11.9", [3]float64{0.01, 0.07, 0.18}, []drug{
		{"10292611000001107", "Metformin 500mg tablets"}, {"10293511000001101", "Metformin 850mg tablets"},
		{"10378111000001100", "Gliclazide 80mg tablets"}, {"11167401000001100", "Linagliptin 5mg tablets"}}},
	{"asthma", "195967001", "J45.9", [3]float64{0.09, 0.07, 0.06}, nil},
	{"COPD", "13645005", "J44.9", [3]float64{0.001, 0.02, 0.07}, nil},
	{"coronary heart disease", "53741008", "I25.9", [3]float64{0.001, 0.02, 0.14}, []drug{
		{"318821008", "Captopril 25mg tablets"}}},
	{"depression", "35489007", "F32.9", [3]float64{0.12, 0.13, 0.10}, nil},
	{"chronic kidney disease", "709044004", "N18.3", [3]float64{0.002, 0.03, 0.20}, nil},
	{"atrial fibrillation", "49436004", "I48.9", [3]float64{0.001, 0.01, 0.10}, nil},
}

// observation kinds: SNOMED CT code, unit, and a plausible value range.
type obsKind struct {
	name   string
	code   string
	unit   string
	lo, hi float64
	digits int
}

var (
	obsHbA1c       = obsKind{"HbA1c", "999791000000106", "mmol/mol", 28, 110, 0}
	obsBMI         = obsKind{"BMI", "60621009", "kg/m2", 16, 48, 1}
	obsSystolic    = obsKind{"systolic BP", "72313002", "mm[Hg]", 95, 190, 0}
	obsCholesterol = obsKind{"total cholesterol", "1005671000000105", "mmol/L", 2.8, 8.5, 1}
)

// Type 1 dissent codes (SNOMED CT UK extension).
const (
	codeDissent  = "827241000000103"
	codeWithdraw = "827261000000102"
)
