// Command gencommonpw writes auth/commonpasswords.txt: a deterministic list of
// a few thousand passwords that attackers try first, built from well-known
// patterns (popular base words and names with the usual suffixes, keyboard
// walks, digit runs, leetspeak). Only entries of at least 8 characters are
// kept, because the policy already refuses anything shorter. Entries are
// lower-case; the policy compares case-insensitively.
//
//	go generate ./auth
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"unicode/utf8"
)

// Popular base words from published breach-frequency lists and their usual
// themes: the word "password", greetings, love, sports and teams, pets, names,
// pop culture, brands, seasons, places, admin defaults.
var bases = strings.Fields(`
password passwd pass passw0rd p@ssword p@ssw0rd pa55word pa55w0rd secret s3cret
qwerty qwertz azerty asdf asdfgh asdfghjkl zxcvbn zxcvbnm qazwsx qwertyuiop
letmein welcome welcome1 hello hellothere iloveyou iloveu loveyou lovely love
sunshine princess dragon monkey football baseball basketball soccer hockey golf
tennis master shadow superman batman spiderman ironman trustno1 starwars
michael jennifer jordan jordan23 hunter charlie thomas jessica ashley daniel
matthew andrew joshua robert william george richard joseph david james john
christopher anthony nicholas justin michelle amanda melissa nicole stephanie
elizabeth samantha sarah hannah taylor madison alexander alexandra victoria
computer internet freedom whatever cheese chocolate summer winter spring autumn
london paris chicago newyork dallas boston texas california florida canada
mustang ferrari porsche harley corvette mercedes yamaha honda toyota nissan
yankees cowboys eagles steelers packers lakers redsox dolphins raiders
liverpool chelsea arsenal barcelona realmadrid juventus manutd
admin administrator root changeme default guest login test testing tester
access master1 abc abcdef abcdefg passion pokemon naruto minecraft fortnite
killer ginger cookie banana orange apple pepper flower butterfly angel baby
babygirl babyboy family forever friends blessed jesus god heaven maggie
buster tigger bailey charlie1 daisy lucky molly rocky shadow1 smokey sparky
bandit coffee diamond silver golden purple yellow blue green red black white
matrix hacker ninja samurai warrior phoenix thunder lightning tiger lion eagle
falcon wolf bear shark panther jaguar cowboy rangers soccer1 player gamer
gaming nintendo playstation xbox steam dragon1 wizard merlin gandalf
superstar rockstar rockyou money dollar cash million rich success
welcome123 monday tuesday friday sunday january february october december
qwerty1 zaq12wsx 1qaz2wsx 1q2w3e4r 1q2w3e 1qazxsw2 qweasd qweasdzxc asdzxc
letmein1 mypassword mypass yourpassword nopassword nothing unknown private
security secure guard allsource company business office server database
oracle mysql postgres linux ubuntu windows microsoft google facebook twitter
instagram youtube netflix amazon apple123 iphone samsung android
hello123 master123 test123 admin123 root123 user user123 demo sample
beautiful pretty sweet sweetie sweetheart honey cutie darling kisses
michael1 jessica1 ashley1 daniel1 andrea maria jose carlos juan luis
alejandro fernando gabriel isabel sofia valentina camila lucas mateo
hannah1 justinbieber onedirection beyonce eminem metallica nirvana slipknot
chelsea1 arsenal1 barca messi ronaldo cristiano neymar zidane beckham
america usa england germany france italia espana mexico brasil russia
qwerty12 iloveyou1 princess1 sunshine1 monkey1 football1 baseball1
trustme believe faith hope peace grace glory victory destiny
whatever1 anything something everything nothing1 bigdaddy daddy mommy
password1 password12 password123 letmein123 welcome12 charlie123
hockey1 hunter2 hunter123 killer1 computer1 internet1 jordan1
starwars1 pokemon1 superman1 batman1 spiderman1 harley1 mustang1
scooter muffin snoopy garfield mickey minnie donald goofy pluto simba
blink182 linkinpark greenday coldplay queen beatles elvis madonna
asdf1234 qwer1234 zxcv1234 1234qwer 1234asdf abcd1234 abc12345 a1b2c3d4
q1w2e3r4 q1w2e3r4t5 1q2w3e4r5t 1q2w3e4r5t6y zaq1xsw2 !qaz2wsx
passpass testtest adminadmin rootroot useruser qwertyqwerty
iloveyouforever ihateyou fuckyou fuckoff asshole bitch shit
letmeinplease opensesame open sesame
`)

// suffixes are appended to every base word; years and leetspeak only to the
// most popular ones (see top).
var suffixes = []string{
	"", "1", "12", "123", "1234", "12345", "!", "1!", "123!", "01", "69", "007", "@123", "2024", "2025",
}

var years = []string{"1980", "1985", "1990", "2000", "2010", "2015", "2018", "2019", "2020", "2021", "2022", "2023", "2026"}

// top are the base words that lead every published frequency list.
var top = strings.Fields(`password passw0rd p@ssword qwerty letmein welcome iloveyou sunshine princess
dragon monkey football baseball master shadow superman batman trustno1 starwars michael jennifer
jordan hunter charlie computer freedom whatever summer winter admin administrator changeme secret
pokemon minecraft liverpool chelsea arsenal love hello abc`)

var leet = strings.NewReplacer("a", "@", "o", "0", "e", "3", "i", "1", "s", "$")

func main() {
	out := flag.String("o", "commonpasswords.txt", "output file")
	flag.Parse()

	set := map[string]struct{}{}
	add := func(s string) {
		s = strings.ToLower(s)
		if utf8.RuneCountInString(s) >= 8 && !strings.ContainsAny(s, " \t\n") {
			set[s] = struct{}{}
		}
	}

	for _, b := range bases {
		for _, suf := range suffixes {
			add(b + suf)
		}
		add(b + b)
		add(reverse(b))
	}
	for _, b := range top {
		for _, y := range years {
			add(b + y)
		}
		for _, suf := range []string{"", "1", "123", "!", "1!", "2024"} {
			add(leet.Replace(b) + suf)
		}
	}

	// Digit runs and repeats.
	digits := "01234567890"
	for n := 8; n <= 10; n++ {
		add(digits[1 : 1+n])
		add(digits[:n])
		add(reverse(digits[1 : 1+n]))
	}
	for d := '0'; d <= '9'; d++ {
		for n := 8; n <= 12; n++ {
			add(strings.Repeat(string(d), n))
		}
	}
	for c := 'a'; c <= 'z'; c++ {
		for n := 8; n <= 10; n++ {
			add(strings.Repeat(string(c), n))
		}
	}
	for _, p := range []string{"12", "123", "1234", "12345", "69", "11", "ab", "abc", "xo", "qw", "asd", "qwe", "xyz", "01", "10"} {
		for n := 8; n <= 12; n++ {
			r := strings.Repeat(p, n/len(p)+1)[:n]
			add(r)
		}
	}
	for _, s := range []string{"11223344", "1122334455", "112233445566", "123123123", "12341234", "123321123", "147258369", "159753", "159357", "741852963", "987654321", "9876543210", "147852369", "123654789", "789456123", "456789123", "12qwaszx", "qwerty123456", "1234567a", "12345678a", "a12345678", "aa123456", "aa12345678", "abc123456", "password!", "1password", "123password", "password2", "pass1234", "pass12345"} {
		add(s)
	}

	// Keyboard walks: rows, columns and zig-zags of a US QWERTY keyboard.
	rows := []string{"1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm", "!@#$%^&*()"}
	for _, row := range rows {
		for i := 0; i < len(row); i++ {
			for j := i + 8; j <= len(row); j++ {
				add(row[i:j])
				add(reverse(row[i:j]))
			}
			for j := i + 4; j <= len(row); j++ {
				for _, suf := range []string{"1234", "123", "12345", "!", "1"} {
					add(row[i:j] + suf)
				}
			}
		}
	}
	cols := []string{"1qaz", "2wsx", "3edc", "4rfv", "5tgb", "6yhn", "7ujm", "8ik,", "9ol.", "0p;/"}
	for i := 0; i < len(cols); i++ {
		walk := ""
		for j := i; j < len(cols); j++ {
			walk += cols[j]
			add(walk)
			add(strings.ToUpper(walk[:1]) + walk[1:] + "!")
		}
	}
	pairs := []string{"1q", "2w", "3e", "4r", "5t", "6y", "7u", "8i", "9o", "0p"}
	for i := 0; i < len(pairs); i++ {
		walk := ""
		for j := i; j < len(pairs); j++ {
			walk += pairs[j]
			add(walk)
		}
	}

	list := make([]string, 0, len(set))
	for s := range set {
		list = append(list, s)
	}
	sort.Strings(list)

	f, err := os.Create(*out)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	w := bufio.NewWriter(f)
	for _, s := range list {
		fmt.Fprintln(w, s)
	}
	if err := w.Flush(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := f.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "wrote %d passwords to %s\n", len(list), *out)
}

func reverse(s string) string {
	r := []rune(s)
	for i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 {
		r[i], r[j] = r[j], r[i]
	}
	return string(r)
}
